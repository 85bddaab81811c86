"""Inference requests that arrive whole, answered by the connection's protocol without ASGI.

Why: uvicorn serves each request through an ASGI cycle: a scope, a ``RequestResponseCycle``
with its ``asyncio.Event``, a task running the app behind ``ProxyHeadersMiddleware``, a
``receive`` for the body, two ``send`` messages each checked header by header against regexes.
Measured in-process (same request, same protocol, a trivial app): 11.7 us of the event loop a
request, against 2.9 for a bare httptools parser and a task (this module: 8.1). Under load
(one process, 32 connections, ``python -m bench.ab --interleave`` against the same tree without
it, 12 pairs): 1.07x the throughput, the event loop 0.86x the CPU per request
(docs/benchmark.md).

:class:`DirectHttpProtocol` (uvicorn's httptools protocol with the limits of
:mod:`app.http.connections`) answers a request itself when it is plain: ``POST`` to an inference
path (``InferenceEntry.match``), HTTP/1.1, a ``Content-Length`` of at most
:data:`MAX_BODY` and no ``Transfer-Encoding``, no ``Expect: 100-continue``, no percent-escape in
the path, no request of the connection still being answered, and its whole body in the bytes
read so far. Anything else, and a request whose body is still arriving when those bytes are
parsed, goes through uvicorn's ASGI cycle exactly as before (the latter with the body read so
far), so slow bodies, large bodies, pipelining behind a request in progress, ``100-continue``
and every other route keep uvicorn's handling.

A direct request runs the same :meth:`app.http.entry.InferenceEntry.handle` as an ASGI one, with
its body in hand and an answer written in one ``write``: every guarantee (request id, auth,
limits, metrics, access line, gzip, Server-Timing, drain) is that method's, not this module's.
What this module does in uvicorn's place: the status line, uvicorn's default headers (``date``),
``connection: close`` when the client or a shutdown asked for it, waiting while the client does
not read (uvicorn's flow control), the keep-alive timer and the next pipelined request once
answered, and the task in the server's task set (so shutdown waits for it).
"""

from __future__ import annotations

import re
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from app.http.connections import GuardedHttpProtocol
from app.http.entry import InferenceEntry
from app.http.inference import refuse_declared, refuse_size

MAX_BODY = 64 * 1024
"""Largest body served directly (uvicorn pauses reading past 64 KiB buffered; larger bodies
keep its flow control and the sliced parsing of ``app.http.decoding``)."""


class _NoEvent:
    """``cycle.message_event`` for uvicorn's ``connection_lost``: nothing waits on a direct
    request's body."""

    @staticmethod
    def set() -> None:
        pass


class _Direct:
    """A request served directly: what it needs, and what uvicorn's protocol and the request
    timer read of ``self.cycle`` while it is the connection's current request."""

    __slots__ = ("raw_path", "query", "match", "headers", "chunks", "complete", "previous",
                 "keep_alive", "disconnected", "response_complete")
    message_event = _NoEvent

    def __init__(self, raw_path: bytes, query: bytes, match: re.Match[str], headers: list[tuple[bytes, bytes]],
                 keep_alive: bool, previous: Any) -> None:
        self.raw_path = raw_path
        self.query = query
        self.match = match
        self.headers = headers
        self.chunks: list[bytes] = []
        self.complete = False  # the whole body is here
        self.previous = previous  # the connection's cycle before this request (None, or answered)
        self.keep_alive = keep_alive  # uvicorn's shutdown() turns it off
        self.disconnected = False
        self.response_complete = False


class DirectHttpProtocol(GuardedHttpProtocol):
    """:class:`~app.http.connections.GuardedHttpProtocol` that serves plain inference requests
    through ``entry`` directly. Configure through ``connections.protocol_class``."""

    entry: InferenceEntry | None = None
    _direct: _Direct | None = None

    def on_headers_complete(self) -> None:
        direct = self._direct_request()
        if direct is None:
            super().on_headers_complete()
            return
        self._in_body = True
        self._direct = direct
        self.cycle = direct  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        direct = self._direct
        if direct is not None and not direct.complete:
            direct.chunks.append(body)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        direct = self._direct
        if direct is None or direct.complete:
            super().on_message_complete()
            return
        self._request_read()
        direct.complete = True
        direct.previous = None  # only a request still being read may go back to it (``_to_asgi``)
        chunks = direct.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        task = self.loop.create_task(self._serve(direct, body))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        direct = self._direct
        if direct is not None and not direct.complete:
            self._to_asgi(direct)

    def _direct_request(self) -> _Direct | None:
        """The request whose headers were just parsed, if it can be served directly."""
        entry = self.entry
        if (entry is None or self.expect_100_continue or self.root_path or self.pipeline
                or (self.cycle is not None and not self.cycle.response_complete)
                or self.app is not self.config.loaded_app):  # over max_connections: refused by uvicorn's path
            return None
        parser = self.parser
        if parser.get_method() != b"POST" or parser.get_http_version() != "1.1" or parser.should_upgrade():
            return None
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return None
                length = int(value)
            elif name == b"transfer-encoding":
                return None
        if length is None or length > MAX_BODY:
            return None
        url = httptools.parse_url(self.url)
        raw_path = url.path
        if b"%" in raw_path or not raw_path.isascii():
            return None
        match = entry.match(raw_path.decode("ascii"))
        if match is None:
            return None
        return _Direct(raw_path, url.query or b"", match, self.headers, parser.should_keep_alive(), self.cycle)

    def _to_asgi(self, direct: _Direct) -> None:
        """The body is still arriving: the request continues through uvicorn's ASGI cycle, as
        if it had gone there from its headers on, with the body read so far."""
        self._direct = None
        self.cycle = direct.previous
        if self.transport.is_closing():
            return
        super().on_headers_complete()
        for chunk in direct.chunks:
            super().on_body(chunk)

    async def _serve(self, direct: _Direct, body: bytes) -> None:
        async def read(declared: str | None, limit: int) -> bytes:
            refuse_declared(declared, limit)
            refuse_size(len(body), limit)
            return body

        async def reply(status: int, headers: list[tuple[bytes, bytes]], payload: bytes) -> None:
            if self.flow.write_paused and not self.transport.is_closing():
                await self.flow.drain()  # the client is not reading: wait, as uvicorn's send does
            if self.transport.is_closing():
                return
            out = [STATUS_LINE[status]]
            for name, value in (*self.server_state.default_headers, *headers):
                out += (name, b": ", value, b"\r\n")
            if not direct.keep_alive:
                out.append(b"connection: close\r\n")
            out += (b"\r\n", payload)
            self.transport.write(b"".join(out))

        assert self.entry is not None
        try:
            await self.entry.handle(direct.headers, direct.raw_path, direct.query, direct.match, read, reply)
        finally:
            direct.response_complete = True
            if self._direct is direct:
                self._direct = None
            if not direct.keep_alive and not self.transport.is_closing():
                self.transport.close()
            self.on_response_complete()
