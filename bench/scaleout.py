"""``python -m bench.scaleout``: one process against several, in one run.

Layouts, interleaved round by round on the same machine, model and load (wrk, v2 JSON, one
50-step sequence per request, ``output`` only):

* ``one process``: ``workers=1`` (the engine in-process; today's defaults);
* ``shared engine``: ``workers=2`` (one engine process, two HTTP workers: global batching);
* ``two copies``: ``workers=2, engine=per_worker`` (each worker its own sessions and batcher:
  the floor ``uvicorn --workers 2`` gives, with no shared batches, model or state);
* the shared engine with one batch in flight on two ONNX Runtime threads (larger batches, less
  parallelism), to show which the default should be.

Per layout: closed loop at 32 connections (throughput, p50/p99, machine busy, server CPU per
request, mean batch), 128 connections (mean batch) and one connection (p50), against raw ONNX
Runtime batch 1 measured in the same run. Ratios are computed within each round. Writes
``bench/results/scaleout.json`` and ``scaleout.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import load, proc
from . import server as srvmod
from .scratch import run_scratch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LAYOUTS: dict[str, dict[str, object]] = {
    "one process": {"workers": 1},
    "shared engine": {"workers": 2},
    "two copies": {"workers": 2, "engine": "per_worker"},
    "shared, 1 batch in flight x 2 threads": {"workers": 2, "max_batches_in_flight": 1, "intra_op_threads": 2},
}


def measure(srv: srvmod.Server, bodies: Path, clients: int, seconds: float, scratch: Path) -> dict:
    url = f"{srv.url}/v2/models/bench/infer"
    m0, cpu0, busy0, t0 = srv.metrics(), srv.cpu_s(), proc.machine_busy(), time.monotonic()
    w = load.run_wrk(url, bodies, clients, seconds, scratch)
    wall = time.monotonic() - t0
    cpu, busy, m1 = srv.cpu_s() - cpu0, proc.machine_busy() - busy0, srv.metrics()
    done = w["requests"]
    batches = srvmod.histogram_delta(m0, m1, "lstm_serve_batch_size", "bench")
    return {
        "clients": clients,
        "req_s": w["req_s"],
        "p50_ms": w["p50_ms"],
        "p99_ms": w["p99_ms"],
        "errors": w["failed"],
        "machine_busy": busy / wall / (os.cpu_count() or 1),
        "server_cores": cpu / wall,
        "server_cpu_ms_per_req": cpu * 1000 / max(done, 1),
        "mean_batch": batches["mean"],
    }


def raw_batch1(model: Path) -> dict[str, float]:
    """Raw ONNX Runtime, one sequence a call, at 1 and 2 intra-op threads (the p50 of one call)."""
    out = {}
    for threads in (1, 2):
        cmd = [sys.executable, "-m", "bench.rawort", str(model), "--config", json.dumps({"intra": threads, "spinning": 0}),
               "--cases", "1x1", "--seconds", "2"]
        res = json.loads(subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout.splitlines()[-1])
        out[f"intra{threads}"] = res["cases"][0]["p50_ms"]
    return out


def run(args: argparse.Namespace) -> dict:
    from .__main__ import model_path

    model = model_path(args.model)
    with run_scratch("bench-scaleout-") as scratch:
        bodies = load.write_bodies(scratch, "fixed", "json", features=8)
        rounds = []
        for r in range(args.rounds):
            raw = raw_batch1(model)
            row: dict[str, dict] = {}
            for name, settings in LAYOUTS.items():
                srv = srvmod.start(model.parents[2], scratch / "logs", {"access_log": "false", **settings})
                try:
                    load.run_wrk(f"{srv.url}/v2/models/bench/infer", bodies, 32, 1, scratch)  # warm-up
                    row[name] = {
                        "c32": measure(srv, bodies, 32, args.seconds, scratch),
                        "c128": measure(srv, bodies, 128, args.seconds / 2, scratch),
                        "c1": measure(srv, bodies, 1, args.seconds / 2, scratch),
                    }
                finally:
                    srv.stop()
            one, shared, copies = (row[n]["c32"] for n in ("one process", "shared engine", "two copies"))
            ratios = {
                "shared_vs_one": shared["req_s"] / one["req_s"],
                "shared_vs_copies": shared["req_s"] / copies["req_s"],
                "copies_vs_one": copies["req_s"] / one["req_s"],
                "ipc_cpu_us_per_req_vs_copies": (shared["server_cpu_ms_per_req"] - copies["server_cpu_ms_per_req"]) * 1000,
                "ipc_cpu_us_per_req_lone_vs_one": (row["shared engine"]["c1"]["server_cpu_ms_per_req"]
                                                   - row["one process"]["c1"]["server_cpu_ms_per_req"]) * 1000,
                "ipc_added_latency_ms_lone": row["shared engine"]["c1"]["p50_ms"] - row["one process"]["c1"]["p50_ms"],
                "lone_p50_minus_raw_b1_ms": {n: row[n]["c1"]["p50_ms"] - min(raw.values()) for n in LAYOUTS},
            }
            rounds.append({"round": r + 1, "raw_b1_p50_ms": raw, "layouts": row, "ratios": ratios})
            print(json.dumps(rounds[-1]["ratios"]), flush=True)
        return {"command": "python -m bench.scaleout " + " ".join(sys.argv[1:]), "cores": os.cpu_count(), "model": args.model,
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": args.seconds, "rounds": rounds}


def report(res: dict) -> str:
    lines = [f"# Scale-out: one process, shared engine, two copies ({res['cores']} cores, same run)", "",
             f"`{res['command']}`, {res['started']}, {res['seconds']:.0f} s per 32-connection phase, "
             f"v2 JSON, one 50-step sequence per request (model `{res['model']}`: bench = 3x128, 8 features).", ""]
    for rnd in res["rounds"]:
        lines += [f"## Round {rnd['round']}", "",
                  "| layout | c=32 req/s | p50 ms | p99 ms | machine busy | server cores | CPU ms/req | mean batch c=32 "
                  "| c=128 req/s | busy c=128 | mean batch c=128 | c=1 p50 ms |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, d in rnd["layouts"].items():
            c, h = d["c32"], d["c128"]
            lines.append(f"| {name} | {c['req_s']:.0f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {c['machine_busy']:.0%} | "
                         f"{c['server_cores']:.2f} | {c['server_cpu_ms_per_req']:.3f} | {c['mean_batch']:.1f} | "
                         f"{h['req_s']:.0f} | {h['machine_busy']:.0%} | {h['mean_batch']:.1f} | {d['c1']['p50_ms']:.2f} |")
        r = rnd["ratios"]
        at128 = {n: d["c128"]["req_s"] for n, d in rnd["layouts"].items()}
        lines += ["", f"raw ONNX Runtime batch 1 p50: {rnd['raw_b1_p50_ms']}",
                  f"at 128 connections: shared / one process **{at128['shared engine'] / at128['one process']:.2f}x**, "
                  f"shared / two copies {at128['shared engine'] / at128['two copies']:.2f}",
                  f"shared / one process: **{r['shared_vs_one']:.2f}x**; shared / two copies: **{r['shared_vs_copies']:.2f}**; "
                  f"two copies / one process: {r['copies_vs_one']:.2f}x",
                  f"IPC cost: {r['ipc_cpu_us_per_req_vs_copies']:.0f} CPU-us per request against two copies at c=32; "
                  f"{r['ipc_cpu_us_per_req_lone_vs_one']:.0f} CPU-us and {r['ipc_added_latency_ms_lone']:.2f} ms p50 for a lone client against one process",
                  "lone-client p50 minus raw batch-1 p50 (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in r["lone_p50_minus_raw_b1_ms"].items()), ""]
    keys = ("shared_vs_one", "shared_vs_copies")
    lines.append("Across rounds: " + ", ".join(
        f"{k} {statistics.mean(x['ratios'][k] for x in res['rounds']):.2f} "
        f"({min(x['ratios'][k] for x in res['rounds']):.2f}-{max(x['ratios'][k] for x in res['rounds']):.2f})" for k in keys))
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--report":  # re-render a saved run: --report RESULTS.json
        print(report(json.loads(Path(sys.argv[2]).read_text())))
        return
    ap = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds at 32 connections")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--model", choices=("bench", "tiny"), default="bench", help="tiny: the smoke test's model")
    ap.add_argument("--layout", action="append", default=[], metavar="NAME=JSON",
                    help='another layout to measure, e.g. \'3 workers={"workers": 3}\' (repeatable)')
    args = ap.parse_args()
    for spec in args.layout:
        name, _, settings = spec.partition("=")
        LAYOUTS[name] = json.loads(settings)
    res = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaleout.json").write_text(json.dumps(res, indent=1))
    text = report(res)
    (args.out / "scaleout.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
