"""``python -m bench.swap``: a new model version loaded under load, one process and two workers.

Per layout (``workers=1``; ``workers=2`` with the shared engine): the bench model (3 layers,
hidden 128, 8 features) serves with ``model_control_mode=explicit`` while 32 clients (asyncio,
one connection each, v2 JSON, one 50-step sequence per request, unversioned) send requests
back to back. After a steady period a copy of the model is renamed into the repository as
version 2 and ``POST /v2/repository/models/bench/load`` is called; the clients go on for a
while after it answered. Reported: requests and failures (any status but 200, or a transport
error), how long the load call took (load + warm-up + publication + the old version's drain),
latency p50/p99 in the 2 s before the swap and from the load call to 0.5 s after it answered, and when the last version-1 answer and the first
version-2 answer were sent. The clients share one Python process with the server's 2 cores,
so the latencies are a client-bound view; the counts are exact. Writes
``bench/results/swap.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from pathlib import Path

import httpx
import numpy as np

from . import server as srvmod
from .__main__ import model_path
from .scratch import run_scratch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _body() -> bytes:
    x = np.random.default_rng(0).standard_normal((1, 50, 8)).astype(np.float32)
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 50, 8],
                                   "data": x.ravel().tolist()}], "outputs": [{"name": "output"}]}).encode()


async def _client(url: str, body: bytes, stop: asyncio.Event, out: list) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = await c.post("/v2/models/bench/infer", content=body, headers={"content-type": "application/json"})
                version = r.json().get("model_version") if r.status_code == 200 else None
                out.append((t0, time.monotonic() - t0, r.status_code, version))
            except httpx.HTTPError as exc:
                out.append((t0, time.monotonic() - t0, 0, repr(exc)))


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)) * 1000, 2) if xs else float("nan")


async def _run(url: str, repo: Path, clients: int, steady_s: float) -> dict:
    body = _body()
    stop = asyncio.Event()
    out: list = []
    tasks = [asyncio.create_task(_client(url, body, stop, out)) for _ in range(clients)]
    await asyncio.sleep(steady_s)
    tmp = repo / "bench" / ".incoming"
    shutil.copytree(repo / "bench" / "1", tmp)
    tmp.rename(repo / "bench" / "2")
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        started = time.monotonic()
        resp = await c.post("/v2/repository/models/bench/load")
        ended = time.monotonic()
    await asyncio.sleep(steady_s)
    stop.set()
    await asyncio.gather(*tasks)
    failures = [r for r in out if r[2] != 200]
    before = [r[1] for r in out if started - 2.0 <= r[0] < started]  # steady state, connections open
    around = [r[1] for r in out if started <= r[0] <= ended + 0.5]
    v1 = [r[0] for r in out if r[3] == "1"]
    v2 = [r[0] for r in out if r[3] == "2"]
    return {
        "load_status": resp.status_code,
        "requests": len(out),
        "failed": len(failures),
        "failure_examples": [str(f) for f in failures[:3]],
        "load_call_s": round(ended - started, 3),
        "p50_ms_before": _pct(before, 50), "p99_ms_before": _pct(before, 99),
        "p50_ms_during_swap": _pct(around, 50), "p99_ms_during_swap": _pct(around, 99),
        "last_v1_sent_s_after_load_call": round(max(v1) - started, 3) if v1 else None,
        "first_v2_sent_s_after_load_call": round(min(v2) - started, 3) if v2 else None,
        "v1_answers_sent_after_load_returned": sum(1 for t in v1 if t > ended),
        "throughput_rps": round(len(out) / (max(r[0] + r[1] for r in out) - min(r[0] for r in out)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.swap", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--steady-s", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    source = model_path("bench")
    results = []
    for rnd in range(args.rounds):
        for workers in (1, 2):
            with run_scratch("bench-swap-") as scratch:
                repo = scratch / "repo"
                shutil.copytree(source.parent, repo / "bench" / "1")
                srv = srvmod.start(repo, scratch / "logs", {"workers": workers, "model_control_mode": "explicit"})
                try:
                    r = asyncio.run(_run(srv.url, repo, args.clients, args.steady_s))
                finally:
                    srv.stop()
            r = {"round": rnd + 1, "workers": workers, "clients": args.clients, **r}
            results.append(r)
            print(json.dumps(r))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "swap.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n| round | workers | requests | failed | load call s | p99 ms before | p99 ms during swap | last v1 sent (s after load call) | first v2 sent |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['round']} | {r['workers']} | {r['requests']} | {r['failed']} | {r['load_call_s']} | "
              f"{r['p99_ms_before']} | {r['p99_ms_during_swap']} | {r['last_v1_sent_s_after_load_call']} | "
              f"{r['first_v2_sent_s_after_load_call']} |")


if __name__ == "__main__":
    main()
