"""``python -m bench.knockout``: what each piece of the inference entry costs, one knocked out at a time.

The server's event loop spends ~100 us a request more than the batching floor (``bench.lean``)
under the same load, in no single layer. This drives the process's real inference entry
(``app.http.entry``, the real codec, metrics and access log) in-process, 32 concurrent callers,
no sockets, and reads the event-loop thread's CPU per request with everything on and with one
piece replaced by the least it could be, alternated variant by variant for ``--rounds``:

* ``no access log``: the access line off (``access_log`` as if false);
* ``no request metrics``: the in-flight gauge and the request histogram and counter as no-ops;
* ``bare decode``: the body decoded as the floor does (orjson, ``np.asarray`` as float32), with
  none of the protocol's checks.

``--engine instant`` (default) answers every request at once without ONNX Runtime, so only the
entry's own cost is measured; ``--engine real`` runs the real engine and model (ONNX Runtime
then shares the cores, as under load). Prints the median CPU per request of each variant and
the median of its saving, paired round by round. Replacing a piece here is a measurement, not a
change: the server has no switch for any of them but the access log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import load
from .__main__ import model_path
from .floor import decode_input
from .scratch import run_scratch


class _Knock:
    """Attributes replaced for one variant, put back after."""

    def __init__(self) -> None:
        self.undo: list[tuple[Any, str, Any]] = []

    def set(self, obj: Any, name: str, value: Any) -> None:
        self.undo.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def restore(self) -> None:
        for obj, name, value in reversed(self.undo):
            setattr(obj, name, value)
        self.undo.clear()


class _NoOp:
    def __getattr__(self, name: str) -> Any:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self


def _variants(entry: Any, state: Any) -> dict[str, Callable[[_Knock], None]]:
    from app.http import decoding
    from app.v2.request import InferRequest
    from app.v2.sequences import Sequences

    async def bare_decode(body: bytes, header_length: str | None, spec: Any, limits: Any) -> Any:
        x = decode_input(body)
        return InferRequest(None, Sequences(x, np.full(x.shape[0], x.shape[1], np.int32)), ("output",), frozenset(), None)

    def no_log(k: _Knock) -> None:
        k.set(entry.requests.access, "enabled", False)

    def no_metrics(k: _Knock) -> None:
        k.set(state.metrics, "inflight", _NoOp())
        k.set(entry.requests, "metrics", _NoOp())

    return {"everything": lambda k: None, "no access log": no_log, "no request metrics": no_metrics,
            "bare decode": lambda k: k.set(decoding, "decode_request", bare_decode)}


async def _run(entry: Any, body: bytes, n: int) -> float:
    """``n`` requests from 32 concurrent callers; the event-loop thread's CPU us per request."""
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    done = 0

    async def caller() -> None:
        nonlocal done
        while done < n:
            scope = {"type": "http", "method": "POST", "path": "/v2/models/bench/infer", "http_version": "1.1",
                     "raw_path": b"/v2/models/bench/infer", "query_string": b"", "headers": headers, "state": {}}
            sent: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            await entry(scope, receive, send)
            if sent[0]["status"] != 200:
                raise RuntimeError(f"the entry answered {sent[0]['status']}: {sent[1].get('body', b'')[:300]!r}")
            done += 1

    t0 = time.thread_time()
    await asyncio.gather(*(caller() for _ in range(32)))
    return (time.thread_time() - t0) * 1e6 / done


async def _main(args: argparse.Namespace) -> dict[str, list[float]]:
    from app import logs
    from app.config import Settings
    from app.engine.batcher import Completed
    from app.http.entry import entry as make_entry
    from app.server import create_app

    with run_scratch("bench-knockout-") as scratch:
        body = (load.write_bodies(scratch, "fixed", "json", features=8) / "body1.bin").read_bytes()
        logs.setup("info")
        app = create_app(Settings(model_repository=model_path(args.model).parents[2], access_log=True))
        state = app.state.server
        entry = make_entry(app, state, None)
        await state.start_engine()
        if args.engine == "instant":
            answer = {"output": np.zeros((1, 1), np.float32)}

            async def submit_within(job: Any, timeout_s: float, why: str) -> Any:
                await asyncio.sleep(0)  # the request still waits one loop turn for its "batch"
                return Completed(answer, 16, 0.001, 0.005)

            state.engine.submit_within = submit_within
        variants = _variants(entry, state)
        results: dict[str, list[float]] = {name: [] for name in variants}
        try:
            await _run(entry, body, args.requests)  # warm
            for _ in range(args.rounds):
                for name, knock_out in variants.items():
                    k = _Knock()
                    knock_out(k)
                    try:
                        results[name].append(await _run(entry, body, args.requests))
                    finally:
                        k.restore()
        finally:
            await state.engine.close(5)
        return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.knockout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("instant", "real"), default="instant")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=4000, help="requests per variant per round")
    ap.add_argument("--model", choices=("bench", "tiny"), default="bench")
    args = ap.parse_args(argv)
    import uvloop

    out = sys.stdout
    with open(os.devnull, "w") as devnull:  # the access lines (and the server's own logs)
        sys.stderr = devnull
        try:
            results = uvloop.run(_main(args))
        finally:
            sys.stderr = sys.__stderr__
    base = results["everything"]
    out.write(f"inference entry in-process, engine {args.engine}, 32 callers, {args.rounds} rounds of "
              f"{args.requests} requests a variant: event-loop thread CPU us/request\n")
    for name, values in results.items():
        saving = statistics.median(b - v for b, v in zip(base, values))
        out.write(f"{name:20s} {statistics.median(values):7.1f}   saves {saving:6.1f}   "
                  f"({', '.join(f'{v:.0f}' for v in values)})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
