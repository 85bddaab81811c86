"""Where the server's CPU goes under load: py-spy samples, grouped into cost centres.

``py-spy record --format raw --threads`` gives collapsed stacks (root first). Each sample is
charged to the cost centre of its *leaf-most* frame that matches one (so orjson called from
``protocol.decode_request`` is "decode", a log call from the middleware is "access log").
Idle samples (threads blocked in epoll or a queue) are left out by py-spy, so the shares are of
CPU, not of wall time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# (cost centre, pattern on "function (file:line)"), most specific first; matched leaf to root.
CENTRES: list[tuple[str, re.Pattern[str]]] = [
    ("ONNX Runtime (session.run)", re.compile(r"onnxruntime")),
    ("batch glue: pad / split (app.engine.padding, app.engine.model)", re.compile(r"app/engine/(padding|model)\.py")),
    ("decode request (orjson + numpy)", re.compile(r"^(decode_request|_parse_header|_tensor|_sequences|_shape|_requested_outputs) .*app/(http/codec|v2/request)\.py")),
    ("encode response (orjson)", re.compile(r"^encode_response .*app/(http/codec|v2/request)\.py")),
    ("metrics (prometheus_client)", re.compile(r"prometheus_client")),
    ("access log (logging + JSON)", re.compile(r"logging/|app/logs\.py")),
    ("batcher (app.engine.batcher)", re.compile(r"app/engine/batcher\.py")),
    ("HTTP protocol and socket writes (app.http.direct, connections, coalescing)", re.compile(r"app/http/(direct|connections|coalescing)\.py")),
    ("route + middleware (app.http.entry, inference, routes, middleware, guard)", re.compile(r"app/(http/(entry|inference|routes|middleware|guard|compression|state|errors|paths|auth)|v2/errors|engine/repository)\.py")),
    ("FastAPI / Starlette", re.compile(r"fastapi/|starlette/|anyio/|pydantic")),
    ("uvicorn HTTP (httptools)", re.compile(r"uvicorn/")),
    ("worker threads (concurrent.futures)", re.compile(r"concurrent/futures|threading\.py")),
    ("event loop (asyncio / uvloop)", re.compile(r"asyncio/|uvloop")),
]
# Leaf frames that are blocked waits py-spy does not always recognise as idle (a worker
# waiting for work, the loop in epoll, uvloop's C loop waiting): not CPU, so left out.
IDLE = re.compile(r"^(_worker \(concurrent/futures/thread\.py|\w*select \(selectors\.py|wait \(threading\.py|"
                  r"run_until_complete \(|run \(asyncio/runners\.py|serve \(uvicorn/server\.py|_serve \()")
# py-spy names each stack's thread first ("thread (tid): name"). The event loop runs on the main
# thread and batches on the batcher's "ort-<model>" threads; anything else (gRPC's poller, whose
# only Python frame is Thread.run while it waits in C) is neither, and is not charged to either.
_THREAD = re.compile(r"^thread \(\w+\): (.*)$")


def _thread_kind(first_frame: str, frames: list[str]) -> str:
    m = _THREAD.match(first_frame)
    if m is None:  # recorded without --threads: tell the two apart by their frames
        return "ORT worker threads" if any("concurrent/futures" in f for f in frames) else "event loop thread"
    name = m.group(1)
    if name == "MainThread":
        return "event loop thread"
    return "ORT worker threads" if name.startswith("ort-") else "other threads"


def categorise(raw_text: str) -> dict:
    """Shares of samples per cost centre, overall and for the event-loop thread vs the others."""
    total: Counter[str] = Counter()
    by_thread: dict[str, Counter[str]] = {"event loop thread": Counter(), "ORT worker threads": Counter(),
                                          "other threads": Counter()}
    n = idle = 0
    for line in raw_text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = stack.split(";")
        kind = _thread_kind(frames[0], frames)
        if IDLE.search(frames[-1]) or (kind == "other threads" and frames[-1].startswith("Thread.run (")):
            idle += c
            continue
        centre = "other Python"
        for frame in reversed(frames[1:]):
            hit = next((name for name, pat in CENTRES if pat.search(frame)), None)
            if hit:
                centre = hit
                break
        total[centre] += c
        by_thread[kind][centre] += c
        n += c
    pct = lambda cnt: {k: round(100.0 * v / n, 1) for k, v in cnt.most_common()} if n else {}  # noqa: E731
    return {
        "samples": n,
        "idle_samples_left_out": idle,
        "share_pct": pct(total),
        "by_thread_pct": {k: pct(v) for k, v in by_thread.items()},
        "thread_share_pct": {k: round(100.0 * sum(v.values()) / n, 1) if n else 0.0 for k, v in by_thread.items()},
    }


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, rate: int = 200) -> dict:
    exe = py_spy()
    if exe is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
           "--format", "raw", "--threads", "-o", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed: {(p.stdout + p.stderr)[-800:]}"}
    res = categorise(out.read_text())
    res["command"] = " ".join(cmd[:1] + ["record", "--pid", "<server>"] + cmd[4:-2])
    return res
