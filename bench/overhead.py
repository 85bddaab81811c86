"""``python -m bench.overhead``: the server's per-request overhead against the HTTP floor, one run.

Per round, on the same machine, model and body (one 50-step sequence, 32 wrk connections):

* the **floor** (``bench.floor``): uvicorn + uvloop + httptools, the body read and decoded into
  a numpy array, a constant small answer: the least this stack spends on a request;
* the **bare floor** (``bench.floor --bare``): the floor's work without ASGI, on a bare
  httptools protocol: what the ASGI server layer itself costs;
* the **batching floor** (``bench.lean``): the floor's app plus a minimal batcher and the
  server's own ONNX Runtime session, with none of the server's guarantees: what batching alone
  costs on this stack (its overhead ratio is reported like a layout's);
* **raw ONNX Runtime** (``bench.rawort``) with each layout's session settings, at batches
  1..32: CPU per row, interpolated at the batch the server formed;
* each **layout** of the server (one process, shared engine, two copies), and, with
  ``--baseline DIR``, one process of another checkout (a ``git archive`` of the commit before
  the work) in the same round.

Reported per layout: server CPU per request (its whole process tree), raw ORT CPU per row at
the server's mean batch, the floor's CPU per request, the overhead ratio
``(server - raw) / floor`` (target <= 2.0), CPU efficiency ``raw / server``, throughput, and for
several workers the connections each worker held (max/min, sampled with ``ss`` mid-run).
Writes ``overhead.json`` and ``overhead.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from app.testing import ROOT, ServerProcess, free_port

from . import load, proc
from . import profile as prof
from . import server as srvmod
from .scratch import run_scratch
from .suite import effective_settings, session_config

RESULTS = ROOT / "bench" / "results"
LAYOUTS: dict[str, dict[str, object]] = {
    "one process": {"workers": 1},
    "shared engine": {"workers": 2},
    "two copies": {"workers": 2, "engine": "per_worker"},
}
BATCHES = (1, 2, 4, 8, 16, 32)


class Floor(ServerProcess):
    """``python -m bench.floor`` (or another bench module's server) on a free port, ready once it
    answers (``ServerProcess.wait_ready``: the floor answers its readiness probe too). Its output
    goes to a log file, removed when it stops, whose end a failed start shows."""

    def __init__(self, module: str = "bench.floor", *args: str) -> None:
        port = free_port()
        fd, name = tempfile.mkstemp(prefix=f"{module}-{port}-", suffix=".log")
        p = subprocess.Popen([sys.executable, "-m", module, "--port", str(port), *args], cwd=ROOT,
                             stdout=fd, stderr=subprocess.STDOUT)
        os.close(fd)
        proc.track(p.pid)
        super().__init__(p, port, Path(name))
        try:
            self.wait_ready(30)
        except BaseException:
            self.stop()
            raise

    def cpu_s(self) -> float:
        return proc.tree_cpu(self.proc.pid)

    def stop(self, timeout: float = 10.0) -> int:
        code = super().stop(timeout)
        proc.untrack(self.proc.pid)
        self.log_path.unlink(missing_ok=True)
        return code


class Lean(Floor):
    """``python -m bench.lean``: the leanest batching server (the floor's app, a minimal batcher,
    the server's ONNX Runtime session); ``mean_batch`` from its own counts."""

    def __init__(self, model: Path) -> None:
        super().__init__("bench.lean", "--model", str(model))

    def batches(self) -> tuple[int, int]:
        s = httpx.get(f"{self.url}/stats", timeout=5).json()
        return s["rows"], s["batches"]


def connections_per_process(port: int) -> dict[int, int]:
    """Established connections on the server's port, by the pid that holds each socket."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    count: dict[int, int] = {}
    for line in out.splitlines():
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        for p in pids:
            count[p] = count.get(p, 0) + 1
    return count


def measure(target, bodies: Path, clients: int, seconds: float, scratch: Path, metrics: bool = True) -> dict:  # type: ignore[no-untyped-def]
    """One closed-loop phase on ``target`` (a bench Server or the Floor), CPU read around it;
    the connections per process are sampled one second in."""
    url = f"{target.url}/v2/models/bench/infer"
    spread: dict[int, int] = {}

    def sample() -> None:
        time.sleep(min(1.0, seconds / 2))
        spread.update(connections_per_process(target.port))

    m0 = target.metrics() if metrics else None
    loop0 = proc.main_thread_cpu(target.pid)
    cpu0, busy0, t0 = target.cpu_s(), proc.machine_busy(), time.monotonic()
    sampler = threading.Thread(target=sample)
    sampler.start()
    w = load.run_wrk(url, bodies, clients, seconds, scratch)
    sampler.join()
    wall = time.monotonic() - t0
    cpu, busy = target.cpu_s() - cpu0, proc.machine_busy() - busy0
    loop = proc.main_thread_cpu(target.pid) - loop0
    done = w["requests"]
    res = {
        "clients": clients,
        "req_s": w["req_s"],
        "p50_ms": w["p50_ms"],
        "p99_ms": w["p99_ms"],
        "errors": w["failed"],
        "machine_busy": busy / wall / (os.cpu_count() or 1),
        "server_cores": cpu / wall,
        "cpu_us_per_req": cpu * 1e6 / max(done, 1),
        # the event-loop thread of the process started (one process: the whole HTTP path)
        "loop_cpu_us_per_req": loop * 1e6 / max(done, 1),
        "connections_per_process": sorted(spread.values(), reverse=True),
    }
    if metrics:
        res["mean_batch"] = srvmod.histogram_delta(m0, target.metrics(), "lstm_serve_batch_size", "bench")["mean"]
    return res


def raw_curve(model: Path, settings: dict, seconds: float, batches: tuple[int, ...] = BATCHES) -> dict:
    """Raw ORT with a layout's session settings (threads, spinning, arena, callers = batches in
    flight; per engine process): CPU-us per row and p50 per batch."""
    s = effective_settings(settings)
    cfg = session_config(s)
    k = int(s["max_batches_in_flight"])
    cases = ",".join(f"{b}x{k}" for b in batches) + (",1x1" if 1 in batches else "")
    cmd = [sys.executable, "-m", "bench.rawort", str(model), "--config", json.dumps(cfg), "--cases", cases,
           "--seconds", str(seconds)]
    res = json.loads(subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout.splitlines()[-1])
    return {"config": cfg, "callers": k, "cases": res["cases"]}


def at_batch(curve: dict, batch: float, key: str = "cpu_ms_per_seq") -> float:
    """A raw curve's value at a (mean, fractional) batch, interpolated on log2(batch)."""
    pts = sorted((c["batch"], c[key]) for c in curve["cases"] if c["callers"] == curve["callers"])
    return float(np.interp(math.log2(max(batch, 1.0)), np.log2([p[0] for p in pts]), [p[1] for p in pts]))


def add_overhead(m: dict, curve: dict, floor_us: float) -> None:
    """Derive, for a measured phase with a ``mean_batch``: raw ORT CPU per row at that batch, the
    overhead over it, that overhead in floors, and the CPU efficiency."""
    raw_us = at_batch(curve, m["mean_batch"]) * 1000
    m["raw_cpu_us_per_row"] = raw_us
    m["overhead_us"] = m["cpu_us_per_req"] - raw_us
    m["overhead_x_floor"] = m["overhead_us"] / floor_us
    m["cpu_efficiency"] = raw_us / m["cpu_us_per_req"]


def run(args: argparse.Namespace) -> dict:
    from .__main__ import model_path

    model = model_path(args.model)
    with run_scratch("bench-overhead-") as scratch:
        encodings = args.encodings.split(",")
        bodies = {enc: load.write_bodies(scratch, "fixed", enc, features=8) for enc in encodings}
        layouts = {n: s for n, s in LAYOUTS.items() if not args.only or n in args.only or n == "one process"}
        if args.baseline:
            layouts[f"one process, before ({args.baseline_label})"] = {"workers": 1, "_root": str(args.baseline)}
            layouts[f"two copies, before ({args.baseline_label})"] = {"workers": 2, "engine": "per_worker",
                                                                      "_root": str(args.baseline)}
        rounds = []
        for r in range(args.rounds):
            load_before = os.getloadavg()
            floor = Floor()
            try:
                load.run_wrk(f"{floor.url}/v2/models/bench/infer", bodies["json"], 32, 1, scratch)
                fl = {enc: measure(floor, bodies[enc], 32, args.seconds, scratch, metrics=False)
                      for enc in encodings if enc == "json"}
            finally:
                floor.stop()
            bare = Floor("bench.floor", "--bare")
            try:
                load.run_wrk(f"{bare.url}/v2/models/bench/infer", bodies["json"], 32, 1, scratch)
                fl["bare"] = measure(bare, bodies["json"], 32, args.seconds, scratch, metrics=False)
            finally:
                bare.stop()
            curves: dict[str, dict] = {}
            lean_key = json.dumps({"workers": 1}, sort_keys=True)
            curves[lean_key] = raw_curve(model, {"workers": 1}, args.raw_seconds)
            lean = Lean(model)
            try:
                load.run_wrk(f"{lean.url}/v2/models/bench/infer", bodies["json"], 32, 1, scratch)
                rows0, batches0 = lean.batches()
                ln = measure(lean, bodies["json"], 32, args.seconds, scratch, metrics=False)
                rows1, batches1 = lean.batches()
            finally:
                lean.stop()
            ln["mean_batch"] = (rows1 - rows0) / max(batches1 - batches0, 1)
            add_overhead(ln, curves[lean_key], fl["json"]["cpu_us_per_req"])
            row: dict[str, dict] = {}
            for name, settings in layouts.items():
                settings = dict(settings)
                root = settings.pop("_root", None)
                key = json.dumps({k: v for k, v in settings.items() if k != "engine"}, sort_keys=True)
                if key not in curves:
                    curves[key] = raw_curve(model, settings, args.raw_seconds)
                srv = srvmod.start(model.parents[2], scratch / "logs", {"access_log": str(args.access_log).lower(), **settings},
                                   root=Path(root) if root else None)
                try:
                    load.run_wrk(f"{srv.url}/v2/models/bench/infer", bodies["json"], 32, 1, scratch)  # warm-up
                    d = {enc: measure(srv, bodies[enc], 32, args.seconds, scratch) for enc in encodings}
                    if name == "one process" and args.profile and r == 0:
                        d["profile"] = profile(srv, bodies["json"], args.profile, scratch)
                    d["c1"] = measure(srv, bodies["json"], 1, max(args.seconds / 2, 2), scratch)
                finally:
                    srv.stop()
                curve = curves[key]
                for enc in encodings:
                    add_overhead(d[enc], curve, fl["json"]["cpu_us_per_req"])
                d["raw_b1_p50_ms"] = at_batch(curve, 1, "p50_ms")
                d["raw_b1_p50_ms_1caller"] = next(c["p50_ms"] for c in curve["cases"] if c["batch"] == 1 and c["callers"] == 1)
                row[name] = d
            one = row["one process"]["json"]["req_s"]
            ratios = {n: d["json"]["req_s"] / one for n, d in row.items()}
            rounds.append({"round": r + 1, "load_before": load_before, "floor": fl, "lean": ln, "raw": curves, "layouts": row,
                           "req_s_vs_one_process": ratios})
            print(json.dumps({"round": r + 1, "floor_us": fl["json"]["cpu_us_per_req"],
                              "lean_overhead_x_floor": round(ln["overhead_x_floor"], 2),
                              "overhead_x_floor": {n: round(d["json"]["overhead_x_floor"], 2) for n, d in row.items()},
                              "vs_one": {n: round(v, 2) for n, v in ratios.items()}}), flush=True)
        return {"command": "python -m bench.overhead " + " ".join(sys.argv[1:]), "cores": os.cpu_count(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": args.seconds, "model": args.model,
                "access_log": args.access_log, "rounds": rounds}


def profile(srv: srvmod.Server, bodies: Path, seconds: float, scratch: Path) -> dict:
    """py-spy on the one-process server under 32-connection JSON load (loop-thread shares)."""
    url = f"{srv.url}/v2/models/bench/infer"
    cmd = [load.wrk_path() or "wrk", "-t1", "-c32", f"-d{seconds + 3:.0f}s", "--timeout", "30s",
           "-s", str(scratch / "bench.lua"), url, "--", str(bodies)]
    w = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.track(w.pid)
    time.sleep(1)
    res = prof.record(srv.pid, seconds, scratch / "profile.raw")
    w.wait()
    proc.untrack(w.pid)
    return res


def _lean_line(rnd: dict) -> list[str]:
    ln = rnd.get("lean")
    if not ln:
        return []
    one = rnd["layouts"]["one process"]["json"]
    return [f"Batching floor (`bench.lean`: the floor's app, a minimal batcher, the server's ONNX Runtime session; "
            f"no guarantees): {ln['req_s']:.0f} req/s, {ln['cpu_us_per_req']:.0f} us CPU/request (event-loop thread "
            f"{ln['loop_cpu_us_per_req']:.0f}), mean batch {ln['mean_batch']:.1f}, raw ORT {ln['raw_cpu_us_per_row']:.0f} us/row: "
            f"overhead **{ln['overhead_x_floor']:.2f}x the floor**, CPU efficiency {ln['cpu_efficiency']:.2f}. "
            f"One process, JSON, against it: {one['req_s'] / ln['req_s']:.2f}x the throughput, "
            f"{one['cpu_us_per_req'] - ln['cpu_us_per_req']:+.0f} us CPU/request."]


def report(res: dict) -> str:
    lines = [f"# Per-request overhead against the HTTP floor ({res['cores']} cores, same run)", "",
             f"`{res['command']}`, {res['started']}, {res['seconds']:.0f} s per phase, 32 wrk connections, one "
             f"50-step sequence per request (model `{res['model']}`), access log "
             f"{'on' if res['access_log'] else 'off'}. CPU = the server's whole process tree. "
             "overhead = (server CPU/request - raw ORT CPU/row at the server's mean batch) / floor CPU/request.", ""]
    for rnd in res["rounds"]:
        fl = rnd["floor"]["json"]
        lines += [f"## Round {rnd['round']} (load average before: {', '.join(f'{x:.2f}' for x in rnd['load_before'])})", "",
                  f"Floor (uvicorn + uvloop + httptools, body decoded to numpy, constant answer): "
                  f"**{fl['cpu_us_per_req']:.0f} us CPU/request**, {fl['req_s']:.0f} req/s on {fl['server_cores']:.2f} cores.",
                  *([f"Bare floor (`bench.floor --bare`: the same work on a bare httptools protocol, no ASGI): "
                      f"{rnd['floor']['bare']['cpu_us_per_req']:.0f} us CPU/request, {rnd['floor']['bare']['req_s']:.0f} req/s: the ASGI "
                      f"server layer is {fl['cpu_us_per_req'] - rnd['floor']['bare']['cpu_us_per_req']:.0f} us of the floor's "
                      f"{fl['cpu_us_per_req']:.0f}."] if "bare" in rnd["floor"] else []),
                  *_lean_line(rnd),
                  "One process: its event-loop thread " + ", ".join(
                      f"{enc} **{rnd['layouts']['one process'][enc].get('loop_cpu_us_per_req', float('nan')):.0f} us/request**"
                      for enc in ("json", "binary") if enc in rnd["layouts"]["one process"])
                  + " (the rest of its CPU is ONNX Runtime's threads).", "",
                  "| layout | body | req/s | vs one process | p50 ms | p99 ms | busy | mean batch | server CPU us/req "
                  "| raw ORT us/row | overhead us | overhead / floor | CPU eff. | conns per process | c=1 p50 ms (raw b1) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, d in rnd["layouts"].items():
            for enc in [k for k in ("json", "binary") if k in d]:
                m = d[enc]
                conns = "/".join(str(c) for c in m["connections_per_process"]) if len(m["connections_per_process"]) > 1 else ""
                one = rnd["layouts"]["one process"][enc]["req_s"]
                lines.append(
                    f"| {name} | {enc} | {m['req_s']:.0f} | {m['req_s'] / one:.2f}x | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                    f"{m['machine_busy']:.0%} | {m['mean_batch']:.1f} | {m['cpu_us_per_req']:.0f} | {m['raw_cpu_us_per_row']:.0f} | "
                    f"{m['overhead_us']:.0f} | **{m['overhead_x_floor']:.2f}x** | {m['cpu_efficiency']:.2f} | {conns} | "
                    + (f"{d['c1']['p50_ms']:.2f} ({d['raw_b1_p50_ms_1caller']:.2f}) |" if enc == "json" else "|"))
        lines.append("")
        p = rnd["layouts"]["one process"].get("profile")
        if p and "by_thread_pct" in p:
            loop = p["by_thread_pct"]["event loop thread"]
            lines += ["py-spy, one process, JSON, 32 connections: share of all samples per cost centre "
                      f"({p['samples']} samples; loop thread {p['thread_share_pct']['event loop thread']} %):", "",
                      "| cost centre (loop thread) | % of all samples | % of the loop thread |", "|---|---|---|"]
            share = p["thread_share_pct"]["event loop thread"] or 1.0
            lines += [f"| {k} | {v} | {100 * v / share:.1f} |" for k, v in loop.items()] + [""]
    if len(res["rounds"]) > 1:
        names = list(res["rounds"][0]["layouts"])
        lines.append("Across rounds, overhead / floor (JSON): " + ", ".join(
            f"{n} {statistics.mean(r['layouts'][n]['json']['overhead_x_floor'] for r in res['rounds']):.2f}" for n in names)
            + ("" if "lean" not in res["rounds"][0] else
               f", batching floor {statistics.mean(r['lean']['overhead_x_floor'] for r in res['rounds']):.2f}"))
    return "\n".join(lines) + "\n"


def main() -> None:
    from . import overhead_interleaved

    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        res = json.loads(Path(sys.argv[2]).read_text())
        print((overhead_interleaved.report if res.get("mode") == "interleaved" else report)(res))
        return
    ap = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per 32-connection phase")
    ap.add_argument("--raw-seconds", type=float, default=0.5, help="seconds per raw ORT batch size")
    ap.add_argument("--raw-cycle-seconds", type=float, default=1.0,
                    help="--interleave: seconds per raw ORT batch size measured again in every cycle")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--encodings", default="json,binary")
    ap.add_argument("--access-log", type=lambda s: s.lower() in ("1", "true", "on"), default=True,
                    help="the servers' access log (default on, as deployed)")
    ap.add_argument("--baseline", type=Path, help="another checkout's root (git archive of the commit before), run as "
                                                  "two more layouts: one process, two copies")
    ap.add_argument("--baseline-label", default="baseline")
    ap.add_argument("--profile", type=float, default=0.0, metavar="SECONDS", help="py-spy the one-process server")
    ap.add_argument("--only", action="append", default=[], metavar="LAYOUT",
                    help="measure only these layouts (repeatable; 'one process' is always measured)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="overhead", help="file stem of the results")
    ap.add_argument("--model", choices=("bench", "tiny"), default="bench")
    ap.add_argument("--interleave", action="store_true",
                    help="every target up at once, the load alternated among them; --rounds cycles, JSON only "
                         "(bench/overhead_interleaved.py)")
    args = ap.parse_args()
    mode = overhead_interleaved if args.interleave else sys.modules[__name__]
    res = mode.run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(res, indent=1))
    text = mode.report(res)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
