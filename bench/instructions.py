"""``python -m bench.instructions``: instructions the server executes per request, counted, not timed.

Why: on a shared 2-core machine a timed A/B (``bench.ab``) moves by +-4 % between runs of 12
pairs, so a change worth 1-3 % of the event loop cannot be told from noise; several such changes
are how the hot path gets cheaper. ``valgrind --tool=callgrind`` counts the instructions each
thread executes, whatever else the machine does: the same tree counts the same within a few
tenths of a per cent.

For each tree (this one, and ``--b-root`` when given), one run: a real ``python -m app`` under
callgrind with instrumentation off while it starts and warms (``--instr-atstart=no``), the tiny
model (ONNX Runtime's own work is not what this measures), then ``--requests`` requests from
``--clients`` keep-alive connections, closed loop, real HTTP over 127.0.0.1, with
instrumentation on. Prints, per tree, instructions per request of the event-loop (main) thread,
of the batch thread(s) and of the whole process, the mean batch the requests ran in (under
valgrind batches form differently than at full speed, so compare trees at similar batches),
and the main thread's top functions. ``--floor`` counts the HTTP floor (``bench.floor``: the
same uvicorn stack, the same body decoded, a constant answer) the same way: the event loop's
instructions per request against the least this stack spends. ``--raw`` counts raw ONNX
Runtime too (``bench.rawort``'s session, the server's session settings, at the server's mean
batch): with ``--floor``, the issue's overhead ratio, (server a request - raw ONNX Runtime a
row) / the floor's, in instructions, which leaves out what two cores shared by three busy
threads add to each. ``--lean`` counts the batching floor (``bench.lean``: the floor's stack
running the same model in batches, with none of the server's guarantees), so the server's
distance to it is what the guarantees and the structure execute. ``--settings`` starts the
server with other settings; with several processes (``{"workers": 2}``: two HTTP workers and
the shared engine) every process is counted, each one's event loop (its main thread) and the
rest, and listed by role. ``--cache`` simulates the L1 caches as well and prints each tree's
event-loop misses a request: instructions alone do not predict time where the code a request
runs is spread wide (the server's loop executes 1.06x the batching floor's instructions, misses
the instruction cache 2.1x as often and takes 1.6x its time; docs/benchmark.md). About 1.2
minutes a tree (``--raw``: half a minute more; ``--cache``: about twice as long). Needs valgrind.

    python -m bench.instructions                       # this tree
    python -m bench.instructions --b-root /tmp/before  # this tree, then another
    python -m bench.instructions --floor               # this tree and the floor
    python -m bench.instructions --floor --raw         # ... and raw ONNX Runtime: the overhead, counted
    python -m bench.instructions --lean --floor --raw  # ... and the batching floor, counted the same way
    python -m bench.instructions --lean --cache        # ... with L1 cache misses, against the batching floor
    python -m bench.instructions --keep /tmp/cg        # keep the per-thread files for callgrind_annotate
    python -m bench.instructions --settings '{"workers": 2}'   # the shared engine's processes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from app.testing import ROOT, ServerProcess, free_port, server_env

from . import load, proc
from .__main__ import model_path
from .scratch import run_scratch
from .server import Metrics
from .suite import effective_settings, session_config

_INFER = "/v2/models/bench/infer"
LENGTH = 50  # steps a request (the benchmark's fixed mix)


async def drive(port: int, body: bytes, requests: int, clients: int, header_length: int = 0) -> None:
    """``requests`` inference requests over ``clients`` keep-alive connections, each sending its
    next request once its last is answered; every answer must be a 200. ``header_length``: the
    body is a binary-extension request whose JSON header is that long (0: plain JSON)."""
    binary = f"inference-header-content-length: {header_length}\r\n" if header_length else ""
    head = (f"POST {_INFER} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n{binary}"
            f"content-length: {len(body)}\r\n\r\n").encode()
    left = requests

    async def connection() -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left > 0:
                left -= 1
                writer.write(head + body)
                answer = await reader.readuntil(b"\r\n\r\n")
                if not answer.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"the server answered {answer[:200]!r}")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", answer)
                await reader.readexactly(int(length.group(1)) if length else 0)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(clients)))


def _events(text: str) -> dict[str, int]:
    """A callgrind output file's totals by event (its ``totals:``, else its ``summary:``): ``Ir``
    (instructions), and with ``--cache-sim=yes`` also ``I1mr``, ``D1mr``, ``D1mw``, ..."""
    names = re.search(r"^events: *(.+)$", text, re.M)
    totals = re.search(r"^totals: *([\d ]+)$", text, re.M) or re.search(r"^summary: *([\d ]+)$", text, re.M)
    if not names or not totals:
        return {}
    return dict(zip(names.group(1).split(), map(int, totals.group(1).split()), strict=False))


def _top(path: Path, n: int) -> list[str]:
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", str(path)], capture_output=True, text=True).stdout
    rows = [line for line in out.splitlines() if re.match(r"^\s*[\d,]+ \(", line) and "PROGRAM TOTALS" not in line]
    return rows[:n]


def _control(pids: list[int], *command: str) -> None:
    """``callgrind_control`` for every process of the server (supervisor, engine, workers: each
    runs under valgrind, which follows forks and, with ``--trace-children``, execs)."""
    for pid in pids:
        subprocess.run(["callgrind_control", *command, str(pid)], capture_output=True)


def _batches(root: Path | str, url: str) -> float:
    """Batches run so far: the server's metric, the batching floor's ``/stats`` (the floor runs none)."""
    if root == _FLOOR:
        return 0.0
    if root == _LEAN:
        return float(httpx.get(f"{url}/stats", timeout=60).json()["batches"])
    return Metrics.parse(httpx.get(f"{url}/metrics", timeout=60).text).total("lstm_serve_batch_size_count", model="bench")


def _role(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


_FLOOR, _LEAN = "floor (bench.floor)", "batching floor (bench.lean)"


def count(root: Path | str, repo: Path, body: bytes, header_length: int, args: argparse.Namespace, scratch: Path) -> dict:
    """One tree's counts (see the module's docstring); ``root`` :data:`_FLOOR` or :data:`_LEAN`:
    the floor's or the batching floor's."""
    port = free_port()
    index = len(list(scratch.glob("server-*.log")))  # this run's number: a port can come round again
    run = f"cg-{index}-{port}"
    out = scratch / run
    env = server_env(repo, port, {"grpc_port": "none", "access_log": "true", **args.settings})
    log_path = scratch / f"server-{index}-{port}.log"
    if root == _FLOOR:
        command = ["-m", "bench.floor", "--port", str(port)]
    elif root == _LEAN:
        command = ["-m", "bench.lean", "--port", str(port), "--model", str(model_path("tiny"))]
    else:
        command = ["-m", "app"]
    tree = root if isinstance(root, Path) else ROOT
    cache = ["--cache-sim=yes"] if args.cache else []
    p = subprocess.Popen(["valgrind", "--tool=callgrind", *cache, "--instr-atstart=no", "--separate-threads=yes",
                          "--trace-children=yes", f"--callgrind-out-file={out}.%p", sys.executable, *command],
                         env=env, cwd=tree, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    proc.track(p.pid)
    server = ServerProcess(p, port, log_path)  # both floors answer the readiness probe too
    url = server.url
    try:
        server.wait_ready(600, poll_s=1, probe_timeout_s=5)  # valgrind: slow to start and to answer
        asyncio.run(drive(port, body, args.warm, args.clients, header_length))
        before = _batches(root, url)
        pids = proc.tree(p.pid)
        roles = {pid: _role(pid) for pid in pids}
        _control(pids, "-i", "on")
        asyncio.run(drive(port, body, args.requests, args.clients, header_length))
        _control(pids, "-i", "off")
        _control(pids, "-d")
        batches = _batches(root, url) - before
    finally:
        server.stop(120)
        proc.untrack(p.pid)
    # One dump per process, a file per thread: <out>.<pid>.1-01, -02, ...
    n = args.requests
    counts: dict[int, dict[int, int]] = {}
    files: dict[tuple[int, int], Path] = {}
    misses: dict[str, float] = {}  # every event loop's simulated cache events a request (``--cache``)
    for f in sorted(scratch.glob(f"{run}.*.*-*")):
        text = f.read_text(errors="replace")
        pid = re.search(r"^pid: *(\d+)", text[:2000], re.M)
        thread = re.search(r"^thread: *(\d+)", text[:2000], re.M)
        key = (int(pid.group(1)) if pid else 0, int(thread.group(1)) if thread else 0)
        events = _events(text)
        counts.setdefault(key[0], {})[key[1]] = events.get("Ir", 0)
        files[key] = f
        if key[1] == 1:
            for event, value in events.items():
                misses[event] = misses.get(event, 0.0) + value / n
    processes = [{"pid": pid, "role": roles.get(pid, "?"), "loop": threads.get(1, 0) / n,
                  "all": sum(threads.values()) / n} for pid, threads in sorted(counts.items())]
    processes = [x for x in processes if x["all"] > 0]
    loop = sum(x["loop"] for x in processes)  # every process's event loop runs on its main thread
    total = sum(x["all"] for x in processes)
    busiest = max(processes, key=lambda x: x["loop"], default=None)
    main_file = files.get((busiest["pid"], 1)) if busiest else None
    return {"root": str(root), "loop": loop, "all": total, "cache": misses,
            "others": total - loop, "batch": n / batches if batches else float("nan"),
            "processes": processes, "top": _top(main_file, args.top) if main_file else []}


# Raw ONNX Runtime in a process of its own, ``calls`` runs of one batch: counted twice, at two
# numbers of calls, so what the process spends to start (imports, the session) cancels out.
_RAW = """
import json, sys
import numpy as np
from bench.rawort import feeds_for, session
model, config, batch, length, calls = sys.argv[1], json.loads(sys.argv[2]), *map(int, sys.argv[3:6])
s = session(model, config, ["CPUExecutionProvider"], batch)
feeds = feeds_for(s, batch, length, np.random.default_rng(0))
for _ in range(calls):
    s.run(["output"], feeds)
"""


def raw_per_row(model: Path, settings: dict, batch: int, length: int, scratch: Path) -> float:
    """Instructions raw ONNX Runtime spends a row at ``batch`` sequences of ``length`` steps, with
    the session settings a server with ``settings`` uses (intra-op threads, spinning, arena):
    every thread of the process, the difference between 20 and 120 calls."""
    config = session_config(effective_settings(settings))
    totals = []
    for calls in (20, 120):
        out = scratch / f"cg-raw-{calls}"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", _RAW,
                        str(model), json.dumps(config), str(batch), str(length), str(calls)],
                       cwd=ROOT, check=True, capture_output=True)
        totals.append(_events(out.read_text(errors="replace")).get("Ir", 0))
    return (totals[1] - totals[0]) / (100 * batch)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--b-root", type=Path, help="also count this checkout (a `git archive` of another commit)")
    ap.add_argument("--floor", action="store_true", help="also count the HTTP floor (bench.floor)")
    ap.add_argument("--lean", action="store_true", help="also count the batching floor (bench.lean: the floor's "
                    "stack batching the same model, none of the server's guarantees)")
    ap.add_argument("--settings", type=json.loads, default={},
                    help='server settings, a JSON object (e.g. \'{"workers": 2}\': every process is counted)')
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warm", type=int, default=200)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--encoding", choices=("json", "binary"), default="json",
                    help="the request's encoding: plain JSON, or the binary tensor extension (not with --floor or "
                    "--lean, whose request is JSON)")
    ap.add_argument("--top", type=int, default=15, help="top functions of the busiest event loop to list (0: none)")
    ap.add_argument("--raw", action="store_true", help="also count raw ONNX Runtime a row at the first tree's "
                    "mean batch and session settings; with --floor, the overhead counted: (process - raw) / floor")
    ap.add_argument("--cache", action="store_true", help="simulate the L1 caches too (valgrind's --cache-sim, "
                    "about twice as slow): each event loop's instruction- and data-cache misses a request")
    ap.add_argument("--keep", type=Path, help="keep the callgrind files here (one per process and thread, "
                    "cg-<n>-<port>.<pid>.1-<thread>) to read with callgrind_annotate")
    args = ap.parse_args(argv)
    if (args.floor or args.lean) and args.encoding != "json":
        ap.error("--floor and --lean count the floors' JSON request: leave --encoding json")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with run_scratch("bench-instructions-") as scratch:
        repo = model_path("tiny").parents[2]
        bodies = load.write_bodies(scratch, "fixed", args.encoding, features=8, fixed=LENGTH)
        body = (bodies / "body1.bin").read_bytes()
        header_length = int((bodies / "hlen.txt").read_text().split()[0])  # body1's
        roots: list[Path | str] = ([ROOT] + ([args.b_root.resolve()] if args.b_root else [])
                                   + ([_LEAN] if args.lean else []) + ([_FLOOR] if args.floor else []))
        results = [count(root, repo, body, header_length, args, scratch) for root in roots]
        print(f"instructions per request (callgrind; tiny model, one {len(body)}-byte {args.encoding} sequence a request, "
              f"{args.requests} requests from {args.clients} connections)")
        print(f"{'tree':40s} {'event loop':>12s} {'other threads':>14s} {'process':>12s} {'mean batch':>11s}")
        for r in results:
            print(f"{r['root'][-40:]:40s} {r['loop']:12,.0f} {r['others']:14,.0f} {r['all']:12,.0f} {r['batch']:11.1f}")
        for r in results:
            if len(r["processes"]) > 1:
                print(f"\n{r['root']}, per process (event loop, whole process):")
                for x in r["processes"]:
                    print(f"  {x['role']:16s} {x['loop']:12,.0f} {x['all']:12,.0f}")
        if args.cache:
            print("\nevent loop, simulated caches a request (callgrind --cache-sim: L1 misses; a miss costs "
                  "tens of cycles, an instruction about one)")
            print(f"{'tree':40s} {'instructions':>12s} {'I1 misses':>10s} {'D1 read':>9s} {'D1 write':>9s}")
            for r in results:
                c = r["cache"]
                print(f"{r['root'][-40:]:40s} {c.get('Ir', 0):12,.0f} {c.get('I1mr', 0):10,.0f} "
                      f"{c.get('D1mr', 0):9,.0f} {c.get('D1mw', 0):9,.0f}")
        if args.b_root:
            a, b = results[:2]
            print(f"B/A: event loop {b['loop'] / a['loop']:.3f}, process {b['all'] / a['all']:.3f}")
        if args.floor:
            floor = results[-1]["loop"]
            print("event loop / floor: " + ", ".join(f"{r['root']} {r['loop'] / floor:.2f}x" for r in results[:-1]))
        if args.raw:
            batch = max(1, round(results[0]["batch"]))
            raw = raw_per_row(model_path("tiny"), args.settings, batch, LENGTH, scratch)
            print(f"raw ONNX Runtime, batch {batch} of {LENGTH} steps, the server's session settings: {raw:,.0f} a row")
            for r in results[: len(results) - (1 if args.floor else 0)]:
                line = f"{r['root']}: process - raw {r['all'] - raw:,.0f} a request"
                if args.floor:
                    line += f", {(r['all'] - raw) / results[-1]['all']:.2f}x the floor's (the overhead target, counted)"
                print(line)
        for r in results:
            if r["top"]:
                print(f"\n{r['root']}: event-loop thread, top functions (self)")
                print("\n".join(r["top"]))
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for f in scratch.glob("cg-*"):
                shutil.move(f, args.keep / f.name)
            print(f"\ncallgrind files kept in {args.keep}")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
