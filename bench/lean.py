"""``python -m bench.lean --port N --model PATH``: the leanest *batching* server on the floor's stack.

``bench.floor`` is the least a request costs this HTTP stack with no model. This is the least a
request costs once it is batched and run, with none of the server's guarantees: the floor's app
(body read whole, orjson, ``np.asarray`` into float32) plus the pieces any batching server needs
and nothing else: a list as the queue, one future per request, a batch handed to one worker
thread as soon as the last one finished (the server's ``dispatch_when_idle``, no delay), the
server's own ONNX Runtime session and padding (``app.engine.runtime`` with default settings,
``app.engine.padding``), and the answer encoded by orjson. No validation beyond the floor's, no
limits, deadlines, metrics, access log, request ids, auth or drain.

``bench.overhead`` measures it in the same round as the floor, raw ONNX Runtime and the server:
its overhead ratio ``(lean - raw) / floor`` is what batching alone costs on this stack, so the
server's distance to it is what its guarantees and structure cost. ``GET /stats`` gives the rows
and batches run (its mean batch, for raw ORT's CPU per row at that batch).
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from app.config import Settings
from app.engine import padding
from app.engine.runtime import Runtime
from app.v2.sequences import Sequences

from .floor import read_input

_READY = b'{"ready":true}'


class LeanBatcher:
    """A queue, a future per request, one batch at a time on one worker thread."""

    def __init__(self, model: Path, max_batch_size: int = 32) -> None:
        self.runtime = Runtime(model, Settings())
        self.spec = self.runtime.spec
        self.max_batch_size = max_batch_size
        self.queue: list[tuple[np.ndarray, asyncio.Future]] = []
        self.busy = self.kicked = False
        self.executor = ThreadPoolExecutor(1)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stats = {"batches": 0, "rows": 0}

    def submit(self, x: np.ndarray) -> asyncio.Future:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        future = self.loop.create_future()
        self.queue.append((x, future))
        if not self.busy and not self.kicked:  # the requests of this loop turn go together
            self.kicked = True
            self.loop.call_soon(self._kick)
        return future

    def _kick(self) -> None:
        self.kicked = False
        if self.busy or not self.queue:
            return
        batch, self.queue = self.queue[: self.max_batch_size], self.queue[self.max_batch_size:]
        self.busy = True
        work = self.executor.submit(self._run, [x for x, _ in batch])
        loop = self.loop
        assert loop is not None
        work.add_done_callback(lambda w: loop.call_soon_threadsafe(self._done, batch, w))

    def _run(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        seqs = [Sequences(x, np.full(x.shape[0], x.shape[1], dtype=np.int32)) for x in xs]
        merged = padding.merge(seqs, self.spec)
        out = self.runtime.run(merged.feeds, ["output"])["output"]
        return [out[i : i + 1] for i in range(len(xs))]

    def _done(self, batch: list[tuple[np.ndarray, asyncio.Future]], work: Future) -> None:
        self.busy = False
        self.stats["batches"] += 1
        self.stats["rows"] += len(batch)
        self._kick()  # the runtime gets its next batch before these answers are written
        for (_, future), result in zip(batch, work.result()):
            future.set_result(result)


def make_app(batcher: LeanBatcher) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """ASGI: POST = the floor's decode, then batched inference; GET /stats = the batch
        counts; anything else (the bench's readiness probe) = 200."""
        if scope["type"] != "http":
            return
        body = _READY
        if scope["method"] == "POST":
            out = await batcher.submit(await read_input(receive))
            body = orjson.dumps({"model_name": "bench", "model_version": "1", "outputs": [
                {"name": "output", "datatype": "FP32", "shape": list(out.shape), "data": out.reshape(-1)}]},
                option=orjson.OPT_SERIALIZE_NUMPY)
        elif scope["path"] == "/stats":
            body = orjson.dumps(batcher.stats)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(prog="python -m bench.lean", description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", type=Path, required=True, help="an exported model.onnx")
    args = ap.parse_args()
    uvicorn.run(make_app(LeanBatcher(args.model)), host="127.0.0.1", port=args.port, loop="uvloop",
                http="httptools", access_log=False, log_level="warning", server_header=False, lifespan="off")


if __name__ == "__main__":
    main()
