"""``python -m bench.streaming``: a 100-step history arriving 10 steps at a time, three ways,
in one run against one server (bench model 3x128, 8 features, v2 JSON, many-to-one):

* ``server-kept``: each chunk carries only its 10 new steps and ``sequence_id``; the server
  keeps the LSTM state;
* ``client-carried``: each chunk carries its 10 steps plus the ``initial_h``/``initial_c`` the
  last answer returned (and asks for ``final_h``/``final_c`` back);
* ``re-send history``: each request carries the whole history so far (10, 20, ... 100 steps).

Every mode answers the same thing after every chunk (checked: the final outputs agree within
1e-5). Reports answers per second, p50/p99 latency and server CPU per answer, and the ratios
against re-sending; ``--streams`` streams run at once. Writes bench/results/streaming.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

from . import server as srvmod
from .scratch import run_scratch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CHUNK, HISTORY = 10, 100
MODES = ("server-kept", "client-carried", "re-send history")


def _tensor(name: str, arr: np.ndarray) -> dict:
    return {"name": name, "datatype": "FP32", "shape": list(arr.shape), "data": arr.ravel().tolist()}


async def stream(client: httpx.AsyncClient, mode: str, sid: int, x: np.ndarray, lat: list[float]) -> np.ndarray:
    h = c = None
    last = None
    for i in range(HISTORY // CHUNK):
        a, b = i * CHUNK, (i + 1) * CHUNK
        if mode == "re-send history":
            doc: dict = {"inputs": [_tensor("input", x[None, :b])], "outputs": [{"name": "output"}]}
        elif mode == "server-kept":
            doc = {"inputs": [_tensor("input", x[None, a:b])], "outputs": [{"name": "output"}],
                   "parameters": {"sequence_id": sid, "sequence_start": i == 0, "sequence_end": b == HISTORY}}
        else:
            inputs = [_tensor("input", x[None, a:b])]
            if h is not None:
                inputs += [_tensor("initial_h", h), _tensor("initial_c", c)]
            doc = {"inputs": inputs, "outputs": [{"name": n} for n in ("output", "final_h", "final_c")]}
        t = time.perf_counter()
        r = await client.post("/v2/models/bench/infer", content=orjson.dumps(doc),
                              headers={"content-type": "application/json"})
        lat.append(time.perf_counter() - t)
        r.raise_for_status()
        outs = {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in r.json()["outputs"]}
        last = outs["output"]
        h, c = outs.get("final_h"), outs.get("final_c")
    assert last is not None
    return last


async def run_mode(url: str, mode: str, xs: list[np.ndarray], base_id: int) -> tuple[list[np.ndarray], list[float], float]:
    lat: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=len(xs))) as client:
        t0 = time.perf_counter()
        finals = await asyncio.gather(*(stream(client, mode, base_id + i, x, lat) for i, x in enumerate(xs)))
        return list(finals), lat, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.streaming", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=16, help="streams at once")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the streams per mode (interleaved)")
    ap.add_argument("--model", choices=("bench", "tiny"), default="bench")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    from .__main__ import model_path

    model = model_path(args.model)
    with run_scratch("bench-streaming-") as scratch:
        rng = np.random.default_rng(0)
        features = json.loads((model.parent / "model.json").read_text())["spec"]["input_size"] if (model.parent / "model.json").exists() else 8
        srv = srvmod.start(model.parents[2], scratch, {"access_log": "false"})
        stats: dict[str, dict] = {m: {"answers": 0, "wall": 0.0, "cpu": 0.0, "lat": []} for m in MODES}
        finals: dict[str, list[np.ndarray]] = {m: [] for m in MODES}
        try:
            for rep in range(args.repeats):
                xs = [rng.standard_normal((HISTORY, features)).astype(np.float32) for _ in range(args.streams)]
                for mode in MODES:
                    cpu0 = srv.cpu_s()
                    got, lat, wall = asyncio.run(run_mode(srv.url, mode, xs, 1 + rep * 100_000 + MODES.index(mode) * 10_000))
                    s = stats[mode]
                    s["cpu"] += srv.cpu_s() - cpu0
                    s["wall"] += wall
                    s["answers"] += len(lat)
                    s["lat"] += lat
                    finals[mode] += got
        finally:
            srv.stop()
        worst = max(float(np.abs(a - b).max()) for m in MODES[:2] for a, b in zip(finals[m], finals["re-send history"]))
        rows = {}
        for mode, s in stats.items():
            rows[mode] = {"answers_per_s": s["answers"] / s["wall"], "p50_ms": float(np.percentile(s["lat"], 50) * 1000),
                          "p99_ms": float(np.percentile(s["lat"], 99) * 1000),
                          "server_cpu_ms_per_answer": s["cpu"] * 1000 / s["answers"]}
        base = rows["re-send history"]
        res = {"command": "python -m bench.streaming", "streams": args.streams, "repeats": args.repeats, "model": args.model,
               "history": HISTORY, "chunk": CHUNK, "max_abs_diff_vs_resend": worst, "modes": rows,
               "ratios_vs_resend": {m: {"throughput": r["answers_per_s"] / base["answers_per_s"],
                                        "server_cpu": r["server_cpu_ms_per_answer"] / base["server_cpu_ms_per_answer"]}
                                    for m, r in rows.items()}}
        lines = [f"# Streaming: {HISTORY}-step histories in {CHUNK}-step chunks, {args.streams} streams at once "
                 f"(model `{args.model}`, same run)", "",
                 "| mode | answers/s | p50 ms | p99 ms | server CPU ms/answer | throughput vs re-send | CPU vs re-send |",
                 "|---|---|---|---|---|---|---|"]
        for m, r in rows.items():
            q = res["ratios_vs_resend"][m]
            lines.append(f"| {m} | {r['answers_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['server_cpu_ms_per_answer']:.3f} | {q['throughput']:.2f}x | {q['server_cpu']:.2f}x |")
        lines += ["", f"Final outputs of chunked modes against re-sending: max abs difference {worst:.2e}.", ""]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "streaming.json").write_text(json.dumps(res, indent=1))
        (args.out / "streaming.md").write_text("\n".join(lines))
        print("\n".join(lines))
        if worst > 1e-4:
            raise SystemExit(f"chunked answers differ from re-sent ones by {worst}")


if __name__ == "__main__":
    main()
