"""Start-up failures as one line that names the problem and the fix, and an exit status.

A server that cannot start should say why in words an operator acts on, not in a traceback:
a bad setting exits 2 (a usage error, as argparse does), anything else that stops the start
(the model repository, a model that cannot be served, the port) exits 1. The mapping is
:func:`run`, wrapped around the whole entry point (``app.__main__``); nothing deeper in the
server prints or exits.
"""

from __future__ import annotations

import logging
import re
import socket
import sys
from collections.abc import Callable

from pydantic import ValidationError
from pydantic_settings import SettingsError

from app.config import ENV_PREFIX
from app.contract import ContractError

USAGE = 2  # exit status of a bad setting
FAILURE = 1  # exit status of anything else that stops the start
PROG = "lstm-serve"


class StartupError(RuntimeError):
    """Stops the start; the message already says what to do. Lower layers subclass it (the
    engine's ``RepositoryError``) so that this module needs none of them."""


def bind(host: str, port: int, setting: str = "port") -> socket.socket:
    """The server's listening socket, bound before models load so that a taken port fails in
    a second, with the fix named, instead of after loading (uvicorn, or with several workers the
    supervisor's acceptor, then listens on it)."""
    return _bind(host, port, setting)


def check_free(host: str, port: int, setting: str) -> None:
    """Fail now, before models load, when another process holds ``port`` (the gRPC port, which
    its own server binds later): the same one line as for the HTTP port."""
    _bind(host, port, setting).close()


def _bind(host: str, port: int, setting: str = "port") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; stop the process that holds the port "
            f"or choose another with --{setting.replace('_', '-')} / {ENV_PREFIX}{setting.upper()}"
        ) from None
    sock.set_inheritable(True)
    return sock


def _setting_problem(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        where = f"{field} (--{field.replace('_', '-')} / {ENV_PREFIX}{field.upper()})" if field else "settings"
        value = f", got {err['input']!r}" if field and "input" in err else ""
        parts.append(f"{where}: {err['msg']}{value}")
    return "invalid setting " + "; ".join(parts) + f"; see {PROG} --help"


def message(exc: BaseException) -> tuple[str, int] | None:
    """The one line and exit status for a known start-up failure; None for anything else."""
    if isinstance(exc, ValidationError):
        return _setting_problem(exc), USAGE
    if isinstance(exc, SettingsError):  # a value pydantic-settings could not parse (JSON fields)
        found = re.search(r'field "(\w+)"', str(exc))
        if found:
            f = found[1]
            return (
                f"invalid setting {f} (--{f.replace('_', '-')} / {ENV_PREFIX}{f.upper()}): cannot parse its value "
                f"(JSON expected, e.g. {ENV_PREFIX}MODEL_VERSIONS='{{\"demo\": [1]}}'); see {PROG} --help",
                USAGE,
            )
        return f"invalid setting: {exc}; see {PROG} --help", USAGE
    if isinstance(exc, StartupError) and str(exc).startswith("model repository"):  # missing, or holds no model
        return f"{exc}; point --model-repository / {ENV_PREFIX}MODEL_REPOSITORY at one", FAILURE
    if isinstance(exc, StartupError | ContractError):
        return str(exc), FAILURE
    return None


def run(main: Callable[[], None]) -> int:
    """Run the entry point; a known start-up failure becomes one line on stderr and its status."""
    try:
        main()
    except Exception as exc:
        known = message(exc)
        if known is None:
            raise
        text, status = known
        logging.shutdown()
        sys.stderr.write(f"{PROG}: error: {' '.join(text.split())}\n")
        return status
    return 0
