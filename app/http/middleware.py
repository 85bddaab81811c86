"""Per-request observability as plain ASGI middleware (no per-request task or body copy):
request id, the whole-request latency histogram, the in-flight gauge and the access log line.

The inference endpoint puts what only it knows (model, batch size, queue and inference time,
error) into the scope's state; this layer reads it once the response has gone out.
"""

from __future__ import annotations

import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.errors import unexpected_error
from app.metrics import Metrics
from app.observe import RequestLog, request_id


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.requests = RequestLog(metrics, access_log)

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
        self.metrics.inflight_add(1)
        try:
            await call()
        finally:
            self.metrics.inflight_add(-1)
            self.requests.done(rid, state, status or 500, time.perf_counter() - start)
