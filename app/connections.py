"""Connection-level limits that uvicorn lacks: how many, and how long before a request starts.

Found by trying: uvicorn (0.55, httptools) arms no timer on a new connection, so a client that
connects and sends nothing, or half a request line, holds its socket for ever; its own
``limit_concurrency`` counts tasks as well as connections, answers in plain text and lets one
fewer connection in than it says. :class:`GuardedHttpProtocol` (a small subclass of uvicorn's
httptools protocol) adds, per connection:

- an idle deadline from the moment it opens (uvicorn's keep-alive timer, ``keep_alive_timeout_s``,
  which uvicorn itself only arms after a response);
- a deadline for the request's headers from their first byte (``body_timeout_s``): past it the
  client gets 408 ``{"error"}`` and the connection is closed;
- at most ``max_connections`` open at once: the next one's request gets 503 ``{"error"}`` with
  Retry-After and ``Connection: close``;
- a JSON ``{"error"}`` instead of uvicorn's plain-text 400 for a request it cannot parse.

The body's own deadline is the ASGI layer's (``guard``), where the endpoint reads it.
:func:`uvicorn_options` is the one place that turns settings into uvicorn options.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import Settings
from .errors import error_response


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The ``uvicorn.Config`` keyword arguments for connection handling (one place, so every
    worker process gets the same)."""
    return {
        "http": protocol_class(settings.max_connections, settings.body_timeout_s),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
    }


def _raw_response(status: bytes, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with an idle deadline from the start, a header deadline and
    a cap on open connections. Configure through :func:`protocol_class`."""

    max_connections: int = 1024
    header_timeout_s: float = 15.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.app = _over_capacity(self.max_connections)
        # Idle until the first byte, as between keep-alive requests: same timer, same handler
        # (data_received cancels it).
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers an unparsable request in plain text; the protocol's errors are JSON.
        message = (
            "malformed HTTP/1.1 request (request line or headers); bytes outside ASCII in a URL "
            "must be percent-encoded"
        )
        self.transport.write(_raw_response(b"400 Bad Request", message))
        self.transport.close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined request behind one still being answered: never write into that answer
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)
            return
        message = f"request headers not complete within body_timeout_s={self.header_timeout_s:g}"
        self.transport.write(_raw_response(b"408 Request Timeout", message))
        self.transport.close()


def protocol_class(max_connections: int, header_timeout_s: float) -> type[GuardedHttpProtocol]:
    """A :class:`GuardedHttpProtocol` with these limits (uvicorn builds one per connection)."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {"max_connections": max_connections, "header_timeout_s": header_timeout_s},
    )


def _over_capacity(limit: int) -> Any:
    """The ASGI app a connection past the cap is served by: 503, then the connection closes."""
    response = error_response(
        503,
        f"server is at max_connections={limit} open connections; retry shortly",
        {"Retry-After": "1", "Connection": "close"},
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await response(scope, receive, send)

    return app
