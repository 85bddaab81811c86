"""``python -m bench.granian``: the real server under uvicorn and under granian, in one run.

Issue 22 asked whether granian (a Rust HTTP server: parsing and socket I/O on its own threads,
off the GIL) serves the real app better than uvicorn + uvloop + httptools. The same process
entry (``app.http.entry`` in front of the FastAPI app, the engine in-process, access log on)
runs under each, alternated round by round on the same model and load (wrk, 32 connections,
one 50-step JSON sequence a request): throughput, p99, server CPU per request (its whole
process tree) and cores used. ``--model tiny`` (one 16-unit layer) shows the HTTP path alone.

granian is not a dependency of lstm-serve: ``pip install granian`` first (the bench says so
and stops when it is missing). Only its ASGI interface is measured: RSGI is a different
application protocol, which the server's entry does not speak. What uvicorn gives and granian
would have to gain before it could be adopted: the connection guard (``app.http.connections``:
body deadline 408, idle keep-alive, max connections 503) and gRPC beside HTTP in one process.
Writes ``granian.json`` and ``granian.md`` into ``--out``.
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
from typing import Any

from app.testing import ROOT, ServerProcess, free_port

from . import load, proc
from . import server as srvmod
from .__main__ import model_path
from .scratch import run_scratch

RESULTS = ROOT / "bench" / "results"


def asgi_app() -> Any:
    """The ASGI app a server process runs (``app.server._run`` hands the same to uvicorn), from
    ``LSTM_SERVE_*`` settings: granian's ``--factory`` target."""
    from app import logs
    from app.config import Settings
    from app.http.entry import entry
    from app.server import create_app

    settings = Settings()
    logs.setup(settings.log_level)
    app = create_app(settings)
    return entry(app, app.state.server, None)


class Granian(ServerProcess):
    """``granian --interface asgi`` on :func:`asgi_app`, ready once /v2/health/ready answers."""

    def __init__(self, repository: Path, runtime_threads: int, log: Path) -> None:
        port = free_port()
        env = dict(os.environ, LSTM_SERVE_MODEL_REPOSITORY=str(repository), LSTM_SERVE_ACCESS_LOG="true",
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--workers", "1",
               "--runtime-threads", str(runtime_threads), "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--factory", "bench.granian:asgi_app"]
        p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        proc.track(p.pid)
        super().__init__(p, port, log)
        self.wait_ready(120, poll_s=0.2)

    def stop(self, timeout: float = 30.0) -> int:
        code = super().stop(timeout)
        proc.untrack(self.proc.pid)
        return code


def measure(url: str, pid: int, bodies: Path, seconds: float, scratch: Path) -> dict[str, float]:
    load.run_wrk(url, bodies, 32, 1, scratch)  # warm-up
    cpu0, t0 = proc.tree_cpu(pid), time.monotonic()
    w = load.run_wrk(url, bodies, 32, seconds, scratch)
    wall, cpu = time.monotonic() - t0, proc.tree_cpu(pid) - cpu0
    if w["failed"]:
        raise RuntimeError(f"errors under load: {w['errors']}, non-2xx {w['non2xx']}")
    return {"req_s": w["req_s"], "p99_ms": w["p99_ms"],
            "cpu_us_per_req": cpu * 1e6 / max(w["requests"], 1), "cores": cpu / wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.granian", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", default="bench,tiny", help="comma-separated: bench (3x128), tiny (1x16)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="granian")
    args = ap.parse_args(argv)
    try:
        import granian  # noqa: F401
    except ImportError:
        print("granian is not installed: pip install granian", file=sys.stderr)
        return 2
    with run_scratch("bench-granian-") as scratch:
        (scratch / "logs").mkdir()
        bodies = load.write_bodies(scratch, "fixed", "json", features=8)
        servers = {"uvicorn (today)": None, "granian ASGI, 1 runtime thread": 1, "granian ASGI, 2 runtime threads": 2}
        rows: list[dict[str, Any]] = []
        for kind in args.models.split(","):
            repo = model_path(kind).parents[2]
            for rnd in range(1, args.rounds + 1):
                for label, threads in servers.items():
                    if threads is None:
                        srv = srvmod.start(repo, scratch / "logs", {"access_log": "true"})
                        url, pid, stop = srv.url, srv.pid, srv.stop
                    else:
                        g = Granian(repo, threads, scratch / "granian.log")
                        url, pid, stop = g.url, g.pid, g.stop
                    try:
                        m = measure(f"{url}/v2/models/bench/infer", pid, bodies, args.seconds, scratch)
                    finally:
                        stop()
                    rows.append({"model": kind, "round": rnd, "server": label, **m})
                    print(json.dumps(rows[-1]), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=1))
        (args.out / f"{args.name}.md").write_text(report(rows, args))
        print(report(rows, args))
        return 0


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    cmd = f"python -m bench.granian --seconds {args.seconds:g} --rounds {args.rounds} --models {args.models}"
    out = ["# The real server under uvicorn and under granian (2 cores, same run)", "",
           f"`{cmd}`, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, wrk 32 connections, one "
           "50-step JSON sequence a request, access log on; CPU = the server's whole process tree. "
           "Per round, throughput against uvicorn's in the same round.", "",
           "| model | round | server | req/s | vs uvicorn | p99 ms | CPU us/req | cores |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["round"] == r["round"] and b["server"].startswith("uvicorn"))
        out.append(f"| {r['model']} | {r['round']} | {r['server']} | {r['req_s']:.0f} | {r['req_s'] / base['req_s']:.2f}x | "
                   f"{r['p99_ms']:.1f} | {r['cpu_us_per_req']:.0f} | {r['cores']:.2f} |")
    out += ["", "Median ratio to uvicorn per model and server:", ""]
    for kind in dict.fromkeys(r["model"] for r in rows):
        for label in dict.fromkeys(r["server"] for r in rows):
            if label.startswith("uvicorn"):
                continue
            ratios = [r["req_s"] / next(b["req_s"] for b in rows if b["model"] == kind and b["round"] == r["round"]
                                        and b["server"].startswith("uvicorn"))
                      for r in rows if r["model"] == kind and r["server"] == label]
            out.append(f"- {kind}, {label}: {statistics.median(ratios):.2f}x uvicorn's throughput")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
