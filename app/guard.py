"""The front door: checks every HTTP request before any route, lookup or body read.

In order, cheapest and least revealing first:

1. bearer token (``auth``), when one is configured: 401 before anything else is said;
2. model name and version in the raw path (``names``): 400 naming the rule, so no endpoint,
   present or future, ever looks up a name that breaks it;
3. the body must arrive within ``body_timeout_s`` of the request's start: the ``receive``
   handed on raises :class:`~app.errors.BodyTimeout` (408, connection closed) when the client
   stalls, whichever endpoint is reading. (The headers' own deadline lives in ``connections``,
   which sees the request before it is complete.)

Plain ASGI, no per-request task: the inference hot path passes through it.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import names
from .auth import BearerAuth, protects
from .errors import BodyTimeout, ServingError, error_response, render


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for key, value in headers:
        if key == b"content-length":
            return value != b"0"
        if key == b"transfer-encoding":
            return True
    return False


def deadline_receive(receive: Receive, timeout_s: float) -> Receive:
    """``receive``, raising BodyTimeout once the body is not complete ``timeout_s`` from now."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    complete = False

    async def receive_by_deadline() -> Message:
        nonlocal complete
        if complete:
            return await receive()
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise BodyTimeout(
                f"request body not complete within body_timeout_s={timeout_s:g}; closing the connection"
            ) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            complete = True
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
            if names.from_raw_path(scope.get("raw_path") or scope["path"].encode("utf-8")) and scope["query_string"]:
                names.check_query(scope["query_string"])
        except ServingError as exc:
            err = render(exc)
            scope.setdefault("state", {})["error"] = err.message  # for the access log line
            await error_response(err.status, err.message, err.headers)(scope, receive, send)
            return
        if _has_body(scope["headers"]):
            receive = deadline_receive(receive, self.body_timeout_s)
        await self.app(scope, receive, send)
