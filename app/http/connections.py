"""Connection-level limits that uvicorn lacks: how many, and how long before a request starts.

Found by trying: uvicorn (0.55, httptools) arms no timer on a new connection, so a client that
connects and sends nothing, or half a request line, holds its socket for ever; its own
``limit_concurrency`` counts tasks as well as connections, answers in plain text and lets one
fewer connection in than it says. :class:`GuardedHttpProtocol` (a small subclass of uvicorn's
httptools protocol) adds, per connection:

- an idle deadline from the moment it opens (``keep_alive_timeout_s``, which uvicorn itself
  only arms after a response), kept as an idle clock rather than a timer per answer;
- one deadline per request, ``body_timeout_s`` from its first byte to its last (a single timer,
  nothing per body chunk): headers still incomplete get 408 ``{"error"}`` here and the
  connection is closed; a late body is flagged in the ASGI scope, and ``guard`` makes the
  endpoint's next ``receive`` raise :class:`~app.v2.errors.BodyTimeout` (408 through
  ``app.v2.errors``, ``Connection: close``), so metrics and logs see the 408 too;
- at most ``max_connections`` open at once: the next one's request gets 503 ``{"error"}`` with
  Retry-After and ``Connection: close``;
- a JSON ``{"error"}`` instead of uvicorn's plain-text 400 for a request it cannot parse.

and, not a limit, every write on the connection through :mod:`app.http.coalescing` (a response's
head and body in one send).

:func:`uvicorn_options` is the one place that turns settings into uvicorn options.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings
from app.http.coalescing import CoalescingTransport
from app.http.errors import error_response


class OpenConnections:
    """Open connections of the whole server: with several HTTP workers each counts its own in
    its slot of a shared array (the supervisor zeroes a dead worker's slot), and the cap applies
    to the sum, so ``max_connections`` means the same whatever ``workers`` is."""

    def __init__(self, slots: Any = None, index: int = 0, on_open: Callable[[], None] | None = None) -> None:
        self.slots, self.index = slots, index
        # A worker tells the supervisor's acceptor each connection it now counts, right after
        # counting it (``processes.handoff``: it weighs what it handed and has not seen counted).
        self.on_open = on_open

    def opened(self, local: int) -> int:
        """Record this process's count; the server-wide total."""
        if self.slots is None:
            return local
        self.slots[self.index] = local
        if self.on_open is not None:
            self.on_open()
        return sum(self.slots)

    def closed(self, local: int) -> None:
        if self.slots is not None:
            self.slots[self.index] = local


COUNT = OpenConnections()  # a worker replaces it with its shared slot (``server.serve_worker``)


def uvicorn_options(
    settings: Settings, protocol: type[GuardedHttpProtocol] | None = None, **attributes: Any
) -> dict[str, Any]:
    """The ``uvicorn.Config`` keyword arguments for connection handling (one place, so every
    worker process gets the same); ``protocol``: a subclass of :class:`GuardedHttpProtocol`
    (``app.http.direct``), given these class ``attributes``."""
    return {
        "http": protocol_class(settings.max_connections, settings.body_timeout_s, protocol, **attributes),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
    }


def _raw_response(status: bytes, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


BODY_EXPIRED = "lstm_serve.body_expired"
"""Scope key set when a request's body is late; ``guard`` turns the app's next receive into 408."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with an idle deadline from the start, one deadline for each
    request's headers and body, and a cap on open connections. Configure through
    :func:`protocol_class`."""

    max_connections: int = 1024
    request_timeout_s: float = 15.0
    _timer: asyncio.TimerHandle | None = None
    _in_body: bool = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # Every write on the connection, the protocol's and each request cycle's, goes through
        # one coalescing wrapper: a response's head and body leave in one send (``coalescing``).
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        if COUNT.opened(len(self.connections)) > self.max_connections:
            self.app = _over_capacity(self.max_connections)
        # Idle until the first byte, as between keep-alive requests: the same idle clock.
        self._idle_since = self.loop.time()
        self._idle_timer = self.loop.call_at(self._idle_since + self.timeout_keep_alive, self._idle_check)

    # Timers that are not armed per request. uvicorn arms a keep-alive timer after every answer
    # and cancels it at the next request's first bytes, and this class armed the request's
    # deadline at its first byte and cancelled it at its last, nearly always in the same read:
    # two ``call_later`` and two ``cancel`` a request, ~1.5 us of the event loop each pair
    # (uvloop), for timers that almost never fire. Instead:
    # - the keep-alive deadline is an idle clock: ``_idle_since`` is set when the connection goes
    #   idle and cleared when a request arrives (where uvicorn cancelled its timer), and one timer
    #   per connection, armed once, checks it when it fires and re-arms for the idle period's
    #   own end: the connection closes ``keep_alive_timeout_s`` after it went idle, as before;
    # - a request's deadline (``body_timeout_s`` from its first byte) is armed only if the request
    #   is still incomplete when the bytes read so far have been parsed, for the same moment.
    _idle_since: float | None = None  # loop time the connection went idle; None while a request is on it
    _idle_timer: asyncio.TimerHandle | None = None
    _began = 0.0  # loop time the request being read began
    _reading = False  # a request has begun and its last byte has not been parsed

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn calls this where a request's bytes arrive and where an answer completes.
        self._idle_since = None

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self.transport.is_closing():
            return
        now, since = self.loop.time(), self._idle_since
        if since is not None and now - since >= self.timeout_keep_alive:
            self.timeout_keep_alive_handler()
            return
        self._idle_timer = self.loop.call_at((now if since is None else since) + self.timeout_keep_alive, self._idle_check)

    def on_response_complete(self) -> None:
        # uvicorn 0.55's, with its keep-alive timer replaced by the idle clock.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:  # the next pipelined request
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_since = self.loop.time()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._reading and self._timer is None and not self.transport.is_closing():
            self._timer = self.loop.call_at(self._began + self.request_timeout_s, self._timed_out)

    # One deadline per request, from its first byte to its last (no cost per body chunk).
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._cancel_timer()
        self._in_body = False
        self._began = self.loop.time()
        self._reading = True

    def on_headers_complete(self) -> None:
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._request_read()
        super().on_message_complete()

    def _request_read(self) -> None:
        """The request's last byte is parsed: its deadline is over."""
        self._reading = False
        self._cancel_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        super().connection_lost(exc)
        COUNT.closed(len(self.connections))

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers an unparsable request in plain text; the protocol's errors are JSON.
        message = (
            "malformed HTTP/1.1 request (request line or headers); bytes outside ASCII in a URL "
            "must be percent-encoded"
        )
        self.transport.write(_raw_response(b"400 Bad Request", message))
        self.transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _rearm(self) -> None:
        self._timer = self.loop.call_later(self.request_timeout_s, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._in_body and cycle is not None:
            if any(queued is cycle for queued, _ in self.pipeline):
                self._rearm()  # not started yet: the server, not the client, holds its body back
            elif cycle.response_complete:
                self.transport.close()  # answered without its body: the rest is not wanted
            else:
                # The endpoint answers (408, through app.v2.errors) at its next receive.
                cycle.scope[BODY_EXPIRED] = True  # type: ignore[literal-required]
                cycle.message_event.set()
            return
        if cycle is not None and not cycle.response_complete:
            self._rearm()  # a pipelined request behind one still being answered: never write into it
            return
        message = f"request headers not complete within body_timeout_s={self.request_timeout_s:g}"
        self.transport.write(_raw_response(b"408 Request Timeout", message))
        self.transport.close()


def protocol_class(
    max_connections: int, request_timeout_s: float, base: type[GuardedHttpProtocol] | None = None, **attributes: Any
) -> type[GuardedHttpProtocol]:
    """A :class:`GuardedHttpProtocol` (or ``base``, a subclass) with these limits (uvicorn builds
    one per connection)."""
    base = base or GuardedHttpProtocol
    return type(
        base.__name__,
        (base,),
        {"max_connections": max_connections, "request_timeout_s": request_timeout_s, **attributes},
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
