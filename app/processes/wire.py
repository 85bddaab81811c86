"""Messages between HTTP workers and the engine process: length-prefixed frames on a Unix
stream socket, read by the event loop itself.

Why this transport (measured on 2 cores, ../shared/reference/engine-notes.md): a Unix stream
socket read through an asyncio Protocol, with the frames of one loop turn written together,
served ~15 % more than ZeroMQ (whose I/O threads compete for the GIL) and cost a lone client
0.4-0.6 ms less; one write per message cost ~15 % more than grouping. Shared memory did not
pay at ~1.6 KB per request: the cost is per message, not per byte.

A frame is ``<u32 header length><u32 payload length><JSON header><payload>``. Arrays never go
through pickle: the header lists each array's dtype and shape (key ``a``) and the payload holds
their raw bytes back to back; the receiver builds read-only numpy views on them.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

PREFIX = struct.Struct("<II")
MAX_FRAME = 1 << 31  # a frame larger than this is a corrupt stream, not a message

# Message kinds (header key "t").
HELLO = "hello"  # worker -> engine: {"pid"}
CATALOG = "catalog"  # engine -> worker: {"models": catalog_to_wire(...), "n" (publication number)}
CATALOG_ACK = "ca"  # worker -> engine: {"n"}: no request of mine holds a version catalog n removed
STATUS = "status"  # engine -> worker: {"ready"}
SUBMIT = "s"  # worker -> engine: {"i", "m", "v", "o"[, "q": [sequence id, start, end]]} + arrays x, lengths[, h, c]
CANCEL = "x"  # worker -> engine: {"i"}
RESULT = "r"  # engine -> worker: {"i", "b", "q", "f", "m", "v", "d", "o"} + one array per output name
ERROR = "e"  # engine -> worker: {"i", "k" (exception class), "msg", "h"[, "m", "v", "d"]}
CALL = "c"  # worker -> engine: {"i", "op", "args"}: control calls off the hot path
REPLY = "cr"  # engine -> worker: {"i", "r"} or {"i", "k", "msg", "h"}


def frame(header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> list[bytes | memoryview]:
    """Encode one message as buffers to write in order (no copy of the arrays' data)."""
    blobs: list[memoryview] = []
    if arrays:
        specs = []
        for a in arrays:
            a = np.ascontiguousarray(a)
            specs.append((a.dtype.str, a.shape))
            blobs.append(memoryview(a).cast("B"))
        header["a"] = specs
    head = orjson.dumps(header)
    return [PREFIX.pack(len(head), sum(b.nbytes for b in blobs)), head, *blobs]


def arrays(header: dict[str, Any], payload: bytes) -> list[np.ndarray]:
    """The arrays a frame carries, as read-only views on its payload."""
    out: list[np.ndarray] = []
    offset = 0
    for dtype_str, shape in header.get("a", ()):
        dtype = np.dtype(dtype_str)
        count = math.prod(shape)
        out.append(np.frombuffer(payload, dtype, count, offset).reshape(shape))
        offset += count * dtype.itemsize
    return out


class Link(asyncio.Protocol):
    """One end of a worker-engine connection.

    Incoming frames go to ``on_message(header, payload)`` as soon as they are complete;
    outgoing frames are queued and written together once per event-loop turn.
    """

    def __init__(
        self,
        on_message: Callable[[Link, dict[str, Any], bytes], None],
        on_lost: Callable[[Link, Exception | None], None],
    ) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._buf = bytearray()
        self._out: list[bytes | memoryview] = []
        self._flush_scheduled = False
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.peer: dict[str, Any] = {}  # what the other end said of itself (HELLO)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= PREFIX.size:
            head_len, payload_len = PREFIX.unpack_from(buf, pos)
            if head_len + payload_len > MAX_FRAME:
                self.close()
                return
            stop = pos + PREFIX.size + head_len + payload_len
            if stop > end:
                break
            start = pos + PREFIX.size
            header = orjson.loads(bytes(buf[start : start + head_len]))
            payload = bytes(buf[start + head_len : stop]) if payload_len else b""
            pos = stop
            self._on_message(self, header, payload)
        if pos:
            del buf[:pos]

    def send(self, parts: list[bytes | memoryview]) -> None:
        if self.closed:
            return
        self._out.extend(parts)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(out))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._flush()
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_lost(self, exc)
