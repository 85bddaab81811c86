"""Structured logs: one JSON object per line, so a log pipeline needs no parsing rules."""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
import weakref

import orjson

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged as a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup(level: str) -> None:
    """Send every logger (ours, uvicorn's) through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our access line replaces it


_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))  # an access line's ts ends: looked up, not formatted


class AccessLog:
    """One JSON line per inference request, in the same shape as every other log line.

    Written straight to stderr rather than through ``logging``: a LogRecord, its handler lock
    and formatter cost about 5 % of the server's CPU under load (py-spy), for a line whose
    fields are already a dict. Honours the log level: nothing is written above ``info``.

    At a cost proportional to what it records: the timestamp's date and time are formatted once
    a second (only the milliseconds per line), and the lines of one event-loop turn go out in one
    write, at the end of that turn (a write per line was a system call per request); outside a
    running loop a line is written at once, and whatever is pending is written at exit.
    """

    NAME = "lstm_serve.access"

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and logging.getLogger(self.NAME).isEnabledFor(logging.INFO)
        self._pending: list[str] = []
        self._second = -1
        self._prefix = ""
        _OPEN.add(self)

    def _ts(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._prefix + _MILLIS[int(now % 1 * 1000)]

    def write(self, fields: dict[str, object]) -> None:
        doc = {"ts": self._ts(time.time()), "level": "info", "logger": self.NAME, "msg": "infer", **fields}
        self._pending.append(orjson.dumps(doc, default=str).decode())
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop in this thread: no turn to wait for
                self.flush()

    def flush(self) -> None:
        """Write the pending lines now, in one write."""
        if self._pending:
            lines, self._pending = self._pending, []
            sys.stderr.write("\n".join(lines) + "\n")


_OPEN: weakref.WeakSet[AccessLog] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for access in list(_OPEN):
        access.flush()
