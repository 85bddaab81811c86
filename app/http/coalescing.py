"""A response's head and body leave in one send: one TCP segment instead of two.

Why: uvicorn writes a response's status line and headers as soon as the app sends
``http.response.start``, and its body at ``http.response.body``; uvloop sends each at once. So
every answer cost two ``send`` calls and reached the client as two segments, two wake-ups of
the client (on a 2-core host the load generator's CPU is the server's too). strace on one
process at 32 connections: 2 writes per request on the event loop; after this, 1.07.

:class:`CoalescingTransport` wraps the connection's transport for uvicorn's protocol and every
request cycle on it, so nothing written on the connection can overtake what it holds. It holds
a write that is a response head (a final status line through the blank line) and sends it with
the next write, the body's, which the app sends right after it (Starlette's responses and the
inference entry do); everything else goes straight through. A head with no body write after
it in the same loop turn (HEAD, 204, a streaming response still producing its first chunk) is
sent at the end of that turn (one ``call_soon``). ``close`` sends what is held first; ``abort``
drops it, as the transport's own abort drops its buffer; a write to a closing transport is
dropped, as asyncio's own transports drop it. Holding is never needed for
correctness, only for fewer sends, so telling a head by its bytes is safe: a body that looked
like one would only leave a turn later.
"""

from __future__ import annotations

import asyncio
from typing import Any

# A body larger than this is not joined to its head (the join would copy it): two writes.
JOIN_LIMIT = 256 * 1024


def _is_head(data: bytes | bytearray | memoryview) -> bool:
    """A final response's status line and headers, as uvicorn writes them in one piece (not an
    interim ``100 Continue``, which the client waits for before it sends the body)."""
    return data[-4:] == b"\r\n\r\n" and data[:9] == b"HTTP/1.1 " and data[9:10] != b"1"


class CoalescingTransport:
    """An ``asyncio.Transport`` that sends a response head with the body written after it, in
    one ``write``; every other call goes to the wrapped transport."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None  # a response head waiting for its body

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._transport.is_closing():
            # The connection is closing or gone (a client that left with requests pipelined:
            # uvicorn checks only its current request for a disconnect). asyncio's transports
            # drop such writes; uvloop's raise once the socket is closed, which logged every
            # answer written after as "Exception in ASGI application".
            self._held = None
            return
        head = self._held
        if head is not None:
            self._held = None
            if len(data) <= JOIN_LIMIT:
                self._transport.write(head + data)
                return
            self._transport.write(head)
        elif _is_head(data):
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        for data in chunks:
            self.write(data)

    def flush(self) -> None:
        """Send a held head now (at the end of the turn it was written in, and on close)."""
        head = self._held
        if head is not None:
            self._held = None
            if not self._transport.is_closing():  # a closing transport drops writes, as it would have
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    # Called per request by uvicorn: spelled out rather than found through __getattr__.
    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
