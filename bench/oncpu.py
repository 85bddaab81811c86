"""``python -m bench.oncpu``: where the event-loop thread's CPU goes, by library, server vs floor.

py-spy (``bench.profile``) charges a sample to the Python frame on top, and counts a thread that
waits for the GIL as busy: under load it puts a third of the server's loop thread in the event
loop itself (``Runner.run``), time the floor does not have. ``perf`` samples only what runs on
a CPU and sees native code, so it tells apart what the two cannot: the interpreter running
Python (``libpython``), the kernel (socket and log writes, reads, epoll, futex), numpy, orjson,
uvloop and httptools. Run on the same machine, same body, same load (32 wrk connections), one
after the other:

* the floor (``bench.floor``), its only thread;
* one server process (defaults, access log on), its event-loop (main) thread.

Prints, per library, CPU microseconds per request on that thread for both, and the difference.
Needs ``perf`` (``apt-get install linux-perf``) with permission to sample (root, or
``kernel.perf_event_paranoid`` <= 1).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

from . import load
from . import server as srvmod
from .__main__ import model_path
from .ab import thread_cpu
from .overhead import Floor
from .scratch import run_scratch

_LIBRARIES = [  # (label, pattern on perf's dso column); first match wins
    ("Python interpreter (libpython)", re.compile(r"libpython|python3")),
    ("kernel", re.compile(r"\[kernel")),
    ("numpy", re.compile(r"_multiarray|numpy")),
    ("orjson", re.compile(r"orjson")),
    ("uvloop", re.compile(r"uvloop|loop\.cpython")),
    ("httptools", re.compile(r"httptools|parser\.cpython|url_parser")),
    ("libc / libm", re.compile(r"libc\.|libm\.")),
]


def available() -> str | None:
    """Why perf cannot be used here, or None."""
    perf = shutil.which("perf")
    if perf is None:
        return "perf is not installed (apt-get install linux-perf)"
    probe = subprocess.run([perf, "stat", "-e", "task-clock", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"perf cannot sample here: {probe.stderr.strip()[-200:]}"
    return None


def _by_library(data: Path) -> Counter[str]:
    out = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "-q"],
                         capture_output=True, text=True, check=True).stdout
    shares: Counter[str] = Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([0-9.]+)%\s+(.+?)\s*$", line)
        if not m:
            continue
        label = next((name for name, pat in _LIBRARIES if pat.search(m.group(2))), "other")
        shares[label] += float(m.group(1)) / 100
    return shares


def sample(pid: int, tid: int, url: str, bodies: Path, seconds: float, scratch: Path, name: str) -> dict:
    """wrk against ``url`` while perf samples thread ``tid``: its CPU per request, split."""
    load.run_wrk(url, bodies, 32, 2, scratch)  # warm
    data = scratch / f"{name}.perf"
    before = thread_cpu(pid)
    rec = subprocess.Popen(["perf", "record", "-q", "-F", "999", "-t", str(tid), "-o", str(data)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    w = load.run_wrk(url, bodies, 32, seconds, scratch)
    rec.send_signal(2)
    rec.wait(30)
    after = thread_cpu(pid)
    key = next(k for k in after if k.split(" ", 1)[0] == f"{pid}/{tid}")
    us = (after[key] - before.get(key, 0.0)) * 1e6 / max(w["requests"], 1)
    shares = _by_library(data)
    return {"req_s": w["req_s"], "us_per_req": us, "libraries": {k: v * us for k, v in shares.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.oncpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--encoding", choices=("json", "binary"), default="json")
    args = ap.parse_args(argv)
    why = available()
    if why:
        print(f"bench.oncpu: {why}")
        return 2
    with run_scratch("bench-oncpu-") as scratch:
        (scratch / "logs").mkdir()
        bodies = load.write_bodies(scratch, "fixed", args.encoding, features=8)
        repo = model_path("bench").parents[2]
        floor = Floor()
        try:
            res = {"floor": sample(floor.pid, floor.pid, f"{floor.url}/v2/models/bench/infer", bodies, args.seconds,
                                   scratch, "floor")}
        finally:
            floor.stop()
        srv = srvmod.start(repo, scratch / "logs", {"access_log": "true"})
        try:
            res["server"] = sample(srv.pid, srv.pid, f"{srv.url}/v2/models/bench/infer", bodies, args.seconds,
                                   scratch, "server")
        finally:
            srv.stop()
        f, s = res["floor"], res["server"]
        print(f"event-loop thread, CPU us/request ({args.encoding}, 32 connections; perf, on-CPU samples)")
        print(f"{'':34s} {'floor':>8s} {'server':>8s} {'server - floor':>15s}")
        labels = [name for name, _ in _LIBRARIES] + ["other"]
        for label in labels:
            a, b = f["libraries"].get(label, 0.0), s["libraries"].get(label, 0.0)
            if a or b:
                print(f"{label:34s} {a:8.1f} {b:8.1f} {b - a:+15.1f}")
        print(f"{'all':34s} {f['us_per_req']:8.1f} {s['us_per_req']:8.1f} {s['us_per_req'] - f['us_per_req']:+15.1f}")
        print(f"throughput: floor {f['req_s']:.0f} req/s, server {s['req_s']:.0f} req/s")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
