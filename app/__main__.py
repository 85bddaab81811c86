"""``lstm-serve`` / ``python -m app``: every setting is a flag and an ``LSTM_SERVE_`` variable.

Start-up failures (a bad setting, the repository, the port) end as one line and exit status 2
or 1 (``startup.run``), never a traceback.
"""

from __future__ import annotations

import sys

from app.cli import help_text
from app.config import Settings
from app.server import serve
from app.startup import run


def _start() -> None:
    settings = Settings(_cli_parse_args=True, _cli_kebab_case=True, _cli_prog_name="lstm-serve")
    serve(settings)


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        sys.stdout.write(help_text())
        sys.exit(0)
    sys.exit(run(_start))


if __name__ == "__main__":
    main()
