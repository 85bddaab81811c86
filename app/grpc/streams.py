"""``ModelStreamInfer``: one bidirectional stream, many requests, answers in order per sequence.

Each request gets its own task the moment it is read, so requests of different sequences (and
requests without one) batch together and answer as soon as each is done; the requests of one
sequence (the same ``sequence_id`` parameter) answer in the order they were sent, because each
waits for its predecessor's answer to be written first. Their *engine* order is arrival order
too: a task reaches ``Engine.submit`` without awaiting anything first, and tasks start in the
order they were created (``app.engine.streams`` keeps each sequence's chunks in that order).

An error is the answer's ``error_message`` and the stream goes on. When the server drains, a
stream stops reading, answers what it had read, then ends with UNAVAILABLE (and
``retry-after``) so a client reconnects to another replica; nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

Answer = Callable[[Any, str], Awaitable[Any]]
_END = object()
RPC = "ModelStreamInfer"


def sequence_key(msg: Any) -> tuple[str, object] | None:
    """The request's ``sequence_id`` parameter as a key (``5`` and ``"5"`` differ, as in Triton);
    None when it has none (0 or "" mean none)."""
    param = msg.parameters.get("sequence_id") if "sequence_id" in msg.parameters else None
    if param is None:
        return None
    which = param.WhichOneof("parameter_choice")
    value = getattr(param, which) if which else None
    return (which, value) if value not in (None, 0, "") else None


async def serve_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, answer: Answer,
                       drain: asyncio.Event) -> AsyncIterator[Any]:
    """Answer every request read from ``requests``; yields the responses to write."""
    out: asyncio.Queue[Any] = asyncio.Queue()
    pending: set[asyncio.Task] = set()
    last: dict[tuple[str, object], asyncio.Future] = {}  # each sequence's last answer written

    async def one(msg: Any, key: tuple[str, object] | None, before: asyncio.Future | None,
                  written: asyncio.Future) -> None:
        try:
            response = await answer(msg, RPC)
            if before is not None:
                await before
            await out.put(response)
        finally:
            if not written.done():
                written.set_result(None)
            if key is not None and last.get(key) is written:
                del last[key]  # nothing of that sequence is pending on this stream

    async def read() -> bool:
        """Read until the client half-closes (False) or the server drains (True)."""
        drained = asyncio.ensure_future(drain.wait())
        iterator = requests.__aiter__()
        try:
            while True:
                nxt = asyncio.ensure_future(iterator.__anext__())
                await asyncio.wait({nxt, drained}, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    nxt.cancel()
                    return True
                try:
                    msg = nxt.result()
                except StopAsyncIteration:
                    return False
                key = sequence_key(msg)
                written = asyncio.get_running_loop().create_future()
                task = asyncio.create_task(one(msg, key, last.get(key) if key else None, written))
                if key is not None:
                    last[key] = written
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            drained.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            last.clear()
            await out.put(_END)

    reader = asyncio.create_task(read())
    try:
        while (item := await out.get()) is not _END:
            yield item
        if await reader:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down; the stream's accepted "
                                "requests were answered: reconnect (to another replica) to go on",
                                (("retry-after", "1"),))
    finally:
        if not reader.done():
            reader.cancel()
            for task in list(pending):
                task.cancel()
