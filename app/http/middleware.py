"""Per-request observability as plain ASGI middleware (no per-request task or body copy):
request id, the whole-request latency histogram, the in-flight gauge and the access log line.

The inference endpoint puts what only it knows (model, batch size, queue and inference time,
error) into the scope's state; this layer reads it once the response has gone out.
"""

from __future__ import annotations

import itertools
import os
import re
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.errors import unexpected_error
from app.logs import AccessLog
from app.metrics import Metrics

_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


_ID_PREFIX = os.urandom(8).hex()
_ID_COUNT = itertools.count()


def _new_process_ids() -> None:
    global _ID_PREFIX, _ID_COUNT
    _ID_PREFIX, _ID_COUNT = os.urandom(8).hex(), itertools.count()


os.register_at_fork(after_in_child=_new_process_ids)


def request_id(sent: bytes | None) -> str:
    """The request's id: the client's ``X-Request-ID`` when it is a safe token (it is echoed in
    a header and logged), else a new one: 32 hex digits, a random 64-bit prefix per process and a
    counter. Unique without a system call per request (``os.urandom`` per request was ~3 % of the
    event loop under load); an id names a request, it is not a secret."""
    if sent is not None:
        candidate = sent.decode("latin-1")
        if _VALID_ID.match(candidate):
            return candidate
    return f"{_ID_PREFIX}{next(_ID_COUNT):016x}"


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access = AccessLog(access_log)
        self.pid = os.getpid()  # which HTTP worker answered, when there are several

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                sent = value
                break
        rid = request_id(sent)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        status = 0
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        async def call() -> None:
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                if status:  # the response had started: nothing sane left to send
                    raise
                state["error"] = f"internal error: {type(exc).__name__}"
                await unexpected_error(exc)(scope, receive, send_with_id)

        infer = scope["method"] == "POST" and scope["path"].endswith("/infer")
        if not infer:
            await call()
            return
        self.metrics.inflight.inc()
        try:
            await call()
        finally:
            self.metrics.inflight.dec()
            elapsed = time.perf_counter() - start
            model = state.get("model", "")
            self.metrics.observe_request(model, status or 500, elapsed)
            if self.access.enabled:
                self.access.write(
                    {
                        "request_id": rid,
                        "model": model,
                        "version": state.get("version"),
                        "code": status or 500,
                        "latency_ms": round(elapsed * 1000, 3),
                        "batch_size": state.get("batch_size"),
                        "queue_ms": state.get("queue_ms"),
                        "inference_ms": state.get("inference_ms"),
                        "error": state.get("error"),
                        "pid": self.pid,
                    }
                )
