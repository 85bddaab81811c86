"""``python -m bench.ab``: two server settings, alternated round by round on one load.

This machine's speed drifts by 10-20 % from one minute to the next (shared host), so a setting
is judged by pairs run back to back, A then B and B then A in turn, several times, never by two
separate runs:

    python -m bench.ab --a '{}' --b '{"max_length_ratio": 1e6}' --mix longtail --rounds 3
    python -m bench.ab --b '{}' --b-root /tmp/before --model tiny   # this tree against another

Each phase starts a fresh server (``bench.server.start``, access log on, plus the phase's
``LSTM_SERVE_*`` settings), warms it for 2 s, then runs wrk (32 connections by default) and
reads the CPU of every thread of the server's process tree. Prints, per phase, throughput,
p50/p99, the share of the time ONNX Runtime was running a batch (its seconds per second, from
the server's own histogram), server CPU per request and the busiest threads' CPU per request
(which thread is the bottleneck: the event loop, or ONNX Runtime's), then the median B/A ratios
over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from . import load, proc
from . import server as srvmod
from .__main__ import model_path
from .scratch import run_scratch

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of every thread of the process tree, keyed "pid/tid name"."""
    out: dict[str, float] = {}
    for member in proc.tree(pid):
        for task in Path(f"/proc/{member}/task").glob("*"):
            try:
                stat = (task / "stat").read_text()
                name = (task / "comm").read_text().strip()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            out[f"{member}/{task.name} {name}"] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def _thread_label(key: str) -> str:
    pid, tid = key.split(" ", 1)[0].split("/")
    return f"{pid}/{'main' if tid == pid else tid}"


def start_warm(settings: dict[str, Any], root: Path | None, repo: Path, bodies: Path, args: argparse.Namespace,
               scratch: Path) -> srvmod.Server:
    """A fresh server (access log on, plus ``settings``; from ``root`` when given), warmed by 2 s of load."""
    srv = srvmod.start(repo, scratch / "logs", {"access_log": "true", **settings}, root=root)
    try:
        load.run_wrk(f"{srv.url}/v2/models/bench/infer", bodies, args.clients, 2, scratch)
    except BaseException:
        srv.stop()
        raise
    return srv


def phase(settings: dict[str, Any], root: Path | None, repo: Path, bodies: Path, args: argparse.Namespace,
          scratch: Path) -> dict[str, Any]:
    srv = start_warm(settings, root, repo, bodies, args, scratch)
    try:
        return measure(srv, bodies, args, scratch)
    finally:
        srv.stop()


def measure(srv: srvmod.Server, bodies: Path, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """One wrk run against a running, warm server: what a phase reports."""
    url = f"{srv.url}/v2/models/bench/infer"
    m0, before, cpu0, t0 = srv.metrics(), thread_cpu(srv.pid), srv.cpu_s(), time.monotonic()
    w = load.run_wrk(url, bodies, args.clients, args.seconds, scratch)
    wall, cpu, after = time.monotonic() - t0, srv.cpu_s() - cpu0, thread_cpu(srv.pid)
    m1 = srv.metrics()
    batches = srvmod.histogram_delta(m0, m1, "lstm_serve_batch_size", "bench")
    runtime = srvmod.histogram_delta(m0, m1, "lstm_serve_inference_duration_seconds", "bench")
    n = max(w["requests"], 1)
    threads = sorted(((k, (v - before.get(k, 0.0)) * 1e6 / n) for k, v in after.items()), key=lambda kv: -kv[1])
    loop_us = sum(us for k, us in threads if _thread_label(k).endswith("/main"))  # every process's event loop
    return {
        "req_s": w["req_s"],
        "p50_ms": w["p50_ms"],
        "p99_ms": w["p99_ms"],
        "errors": w["failed"],
        "cpu_us_per_req": cpu * 1e6 / n,
        "wrk_us_per_req": w["cpu_s"] * 1e6 / n,  # the client shares the cores
        "cores": cpu / wall,
        "mean_batch": batches["mean"],
        # ONNX Runtime's seconds per second of wall (over 1 only with batches in flight side by
        # side): under 1 at one batch in flight, the runtime waited that share of the time
        # between batches, for the event loop or the GIL.
        "runtime_busy": runtime["sum"] / wall,
        "loop_us_per_req": loop_us,
        # "pid/tid" per thread, "pid/main" for a process's main (event-loop) thread
        "threads_us_per_req": [f"{_thread_label(k)}:{us:.0f}" for k, us in threads[:5]],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", default="{}", help="settings of A, a JSON object (default: the defaults)")
    ap.add_argument("--b", default="{}", help="settings of B, a JSON object (default: the defaults)")
    ap.add_argument("--b-root", type=Path, help="run B from this checkout (a `git archive` of another commit) "
                    "instead of this one: code against code")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--mix", choices=load.MIXES, default="fixed")
    ap.add_argument("--encoding", choices=("json", "binary"), default="json")
    ap.add_argument("--model", choices=("bench", "tiny"), default="bench")
    ap.add_argument("--interleave", action="store_true",
                    help="start A and B once, side by side, and alternate the load between them every "
                    "--seconds (short phases, e.g. 3 s, many rounds): both see the same minute of the machine")
    args = ap.parse_args(argv)
    settings = {"A": json.loads(args.a), "B": json.loads(args.b)}
    with run_scratch("bench-ab-") as scratch:
        (scratch / "logs").mkdir()
        bodies = load.write_bodies(scratch, args.mix, args.encoding, features=8)
        repo = model_path(args.model).parents[2]
        print(f"A = {settings['A']}, B = {settings['B']}{f' from {args.b_root}' if args.b_root else ''}; {args.mix} {args.encoding}, {args.clients} connections, "
              f"{args.seconds:g} s a phase, model {args.model}")
        rows: list[dict[str, Any]] = []
        servers: dict[str, srvmod.Server] = {}
        try:
            if args.interleave:
                for label in ("A", "B"):
                    servers[label] = start_warm(settings[label], args.b_root if label == "B" else None, repo, bodies,
                                                args, scratch)
            _rounds(args, settings, servers, repo, bodies, scratch, rows)
        finally:
            for srv in servers.values():
                srv.stop()
        pairs = [(next(r for r in rows if r["round"] == n and r["setting"] == "A"),
                  next(r for r in rows if r["round"] == n and r["setting"] == "B")) for n in range(1, args.rounds + 1)]
        keys = [("req_s", "req_s"), ("cpu_us_per_req", "cpu_us_per_req"), ("p99_ms", "p99_ms")]
        if args.interleave:
            keys.append(("event-loop thread us/req", "loop_us_per_req"))
        for label, key in keys:
            ratios = [b[key] / a[key] for a, b in pairs]
            print(f"B/A {label}: median {statistics.median(ratios):.3f} (rounds: {', '.join(f'{x:.3f}' for x in ratios)})")
        if any(r["errors"] for r in rows):
            raise SystemExit(1)  # a failed run: its server logs stay (run_scratch)
        return 0


def _rounds(args: argparse.Namespace, settings: dict[str, dict[str, Any]], servers: dict[str, srvmod.Server],
            repo: Path, bodies: Path, scratch: Path, rows: list[dict[str, Any]]) -> None:
    for rnd in range(1, args.rounds + 1):
        # A first in odd rounds, B first in even ones: whatever the second phase of a pair gains or
        # loses by coming second (it was measured both ways) falls on each setting equally.
        for label in ("A", "B") if rnd % 2 else ("B", "A"):
            if servers:
                r = {"round": rnd, "setting": label, **measure(servers[label], bodies, args, scratch)}
            else:
                root = args.b_root if label == "B" else None
                r = {"round": rnd, "setting": label, **phase(settings[label], root, repo, bodies, args, scratch)}
            rows.append(r)
            print(f"round {rnd} {label}: {r['req_s']:7.0f} req/s  p50 {r['p50_ms']:6.2f}  p99 {r['p99_ms']:6.2f} ms  "
                  f"batch {r['mean_batch']:4.1f}  ORT busy {r['runtime_busy']:.2f}  CPU {r['cpu_us_per_req']:5.0f} us/req on {r['cores']:.2f} cores (wrk "
                  f"{r['wrk_us_per_req']:.0f})  busiest threads "
                  f"(us/req) {' '.join(r['threads_us_per_req'])}  errors {r['errors']}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
