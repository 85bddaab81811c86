"""``lstm-serve`` / ``python -m app``: every setting is a flag and an ``LSTM_SERVE_`` variable."""

from __future__ import annotations

from .config import Settings
from .server import serve


def main() -> None:
    settings = Settings(_cli_parse_args=True, _cli_kebab_case=True, _cli_prog_name="lstm-serve")
    serve(settings)


if __name__ == "__main__":
    main()
