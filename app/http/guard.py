"""The front door: checks every HTTP request before any route, lookup or body read.

In order, cheapest and least revealing first:

1. bearer token (``auth``), when one is configured: 401 before anything else is said;
2. model name and version in the raw path (``names``): 400 naming the rule, so no endpoint,
   present or future, ever looks up a name that breaks it;
3. a late body: ``connections`` times each request from its first byte to its last and flags
   a late body in the scope; the ``receive`` handed on then raises
   :class:`~app.v2.errors.BodyTimeout` (408, connection closed), whichever endpoint is reading.

Plain ASGI, no per-request task: the inference hot path passes through it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http import paths
from app.http.auth import BearerAuth, protects
from app.http.connections import BODY_EXPIRED
from app.http.errors import error_response
from app.v2.errors import BodyTimeout, ServingError, render


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for key, value in headers:
        if key == b"content-length":
            return value != b"0"
        if key == b"transfer-encoding":
            return True
    return False


def deadline_receive(receive: Receive, scope: Scope, timeout_s: float) -> Receive:
    """``receive``, raising BodyTimeout once ``connections`` has flagged the body as late."""

    async def receive_by_deadline() -> Message:
        message = await receive()
        if BODY_EXPIRED in scope:
            raise BodyTimeout(
                f"request body not complete within body_timeout_s={timeout_s:g}; closing the connection"
            )
        return message

    return receive_by_deadline


class RequestGuard:
    """ASGI middleware: authentication, name/version rules and the body deadline."""

    def __init__(self, app: ASGIApp, body_timeout_s: float, auth: BearerAuth | None = None) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            if self.auth is not None and protects(scope["path"]):
                self.auth.check(scope["headers"])
            if paths.from_raw_path(scope.get("raw_path") or scope["path"].encode("utf-8")) and scope["query_string"]:
                paths.check_query(scope["query_string"])
        except ServingError as exc:
            err = render(exc)
            scope.setdefault("state", {})["error"] = err.message  # for the access log line
            await error_response(err.status, err.message, err.headers)(scope, receive, send)
            return
        if _has_body(scope["headers"]):
            receive = deadline_receive(receive, scope, self.body_timeout_s)
        await self.app(scope, receive, send)
