"""``python -m bench.overhead --interleave``: the overhead ratios with every target up at once.

Why: this machine's speed moves 10-25 % between minutes (a shared host), and one round of
``bench.overhead`` measures its floor, its servers and its baseline in phases minutes apart:
a single round's overhead for one process read anything from 2.8x to 4.6x the floor. Here the
floor, the bare floor, the batching floor (``bench.lean``) and every layout's server (and the
baseline's, with ``--baseline``) are started once and stay up; each cycle then runs the same
32-connection JSON load on each in turn (the order rotated every cycle), and the same load in
the binary tensor extension on the one-process server, so every ratio is taken within one
cycle, a minute or less, and the report gives the medians over the cycles (with their range).

Raw ONNX Runtime is measured in every cycle too, as one more target of the rotation (batches
4-32, ``--raw-cycle-seconds`` each, every layout's session settings), and each cycle's overhead
is taken against that cycle's raw figure. Why: measured once before the servers start (0.5 s a
batch size, a fresh session), raw CPU per row at batch 16 read 208, 241 and 249 us in three
runs of one day on one machine, and the overhead ratio moved with it by a whole floor (one
process 1.6x against 0.5x the floor for the same server figures): the ratio's reference was
not measured when the server was. The curve measured at the start stays for batch 1 and the
report's last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from . import load
from . import server as srvmod
from .overhead import LAYOUTS, Floor, Lean, add_overhead, measure, raw_curve
from .scratch import run_scratch

FLOOR, BARE, LEAN = "floor", "bare floor", "batching floor"
RAW = "raw ONNX Runtime"
BINARY = "one process, binary"  # the one-process server again, its requests in the binary tensor extension
RAW_BATCHES = (4, 8, 16, 32)  # around every layout's mean batch (7-16 at 32 connections)


def _settings_key(settings: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in settings.items() if k not in ("engine", "_root")}, sort_keys=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from .__main__ import model_path

    model = model_path(args.model)
    with run_scratch("bench-overhead-interleaved-") as scratch:
        (scratch / "logs").mkdir()
        bodies = load.write_bodies(scratch, "fixed", "json", features=8)
        binary_bodies = load.write_bodies(scratch, "fixed", "binary", features=8)
        layouts: dict[str, dict[str, Any]] = {n: dict(s) for n, s in LAYOUTS.items()
                                              if not args.only or n in args.only or n == "one process"}
        if args.baseline:
            layouts[f"one process, before ({args.baseline_label})"] = {"workers": 1, "_root": str(args.baseline)}
            layouts[f"two copies, before ({args.baseline_label})"] = {"workers": 2, "engine": "per_worker",
                                                                      "_root": str(args.baseline)}
        sessions = {_settings_key(s): {k: v for k, v in s.items() if k != "_root"} for s in [{"workers": 1}, *layouts.values()]}
        curves = {key: raw_curve(model, s, args.raw_seconds) for key, s in sessions.items()}
        targets: dict[str, Any] = {}
        try:
            targets[FLOOR] = Floor()
            targets[BARE] = Floor("bench.floor", "--bare")
            targets[LEAN] = Lean(model)
            for name, settings in layouts.items():
                s = {k: v for k, v in settings.items() if k != "_root"}
                root = settings.get("_root")
                targets[name] = srvmod.start(model.parents[2], scratch / "logs",
                                             {"access_log": str(args.access_log).lower(), **s},
                                             root=Path(root) if root else None)
            for t in targets.values():
                load.run_wrk(f"{t.url}/v2/models/bench/infer", bodies, 32, 2, scratch)  # warm
            cycles = []
            names = [*targets, BINARY, RAW]
            for c in range(args.rounds):
                order = names[c % len(names):] + names[:c % len(names)]
                row: dict[str, dict[str, Any]] = {}
                cycle_curves: dict[str, Any] = {}
                for name in order:
                    if name == RAW:
                        cycle_curves = {key: raw_curve(model, s, args.raw_cycle_seconds, RAW_BATCHES)
                                        for key, s in sessions.items()}
                        continue
                    t = targets["one process" if name == BINARY else name]
                    before = t.batches() if name == LEAN else None
                    m = measure(t, binary_bodies if name == BINARY else bodies, 32, args.seconds, scratch,
                                metrics=name in layouts or name == BINARY)
                    if before is not None:
                        rows, batches = (a - b for a, b in zip(t.batches(), before))
                        m["mean_batch"] = rows / max(batches, 1)
                    row[name] = m
                floor_us = derive(row, layouts, cycle_curves)
                cycles.append({"cycle": c + 1, "load_before": os.getloadavg(), "targets": row, "raw": cycle_curves})
                print(json.dumps({"cycle": c + 1, "floor_us": round(floor_us, 1),
                                  "overhead_x_floor": {n: round(row[n]["overhead_x_floor"], 2) for n in [LEAN, *layouts, BINARY]},
                                  "vs_one": {n: round(row[n]["vs_one_process"], 2) for n in layouts}}), flush=True)
        finally:
            for t in targets.values():
                t.stop()
        return {"command": "python -m bench.overhead " + " ".join(sys.argv[1:]), "mode": "interleaved",
                "cores": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": args.seconds,
                "model": args.model, "access_log": args.access_log, "layouts": list(layouts), "raw": curves,
                "cycles": cycles}


def derive(row: dict[str, dict[str, Any]], layouts: dict[str, dict[str, Any]], curves: dict[str, Any]) -> float:
    """One cycle's ratios, in place: each server's overhead against ``curves`` (raw ONNX Runtime
    measured in the same cycle, by session settings) and the floor measured in it, and its
    throughput against one process's. Returns the floor's CPU per request."""
    floor_us = float(row[FLOOR]["cpu_us_per_req"])
    for name in [LEAN, *layouts, *([BINARY] if BINARY in row else [])]:
        m = row[name]
        add_overhead(m, curves[_settings_key(layouts.get(name, {"workers": 1}))], floor_us)
        m["vs_one_process"] = m["req_s"] / row["one process"]["req_s"]
        if m.get("machine_busy"):
            # The most this layout could serve against one process with the machine 100 % busy
            # at the CPU a request it spent (every process's, the load generator's included):
            # what no change of scheduling can pass, only less CPU a request.
            m["vs_one_at_full_busy"] = m["vs_one_process"] / m["machine_busy"]
    return floor_us


def _median(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    return f"{med:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})" if len(values) > 1 else f"{med:{fmt}}"


def report(res: dict[str, Any]) -> str:
    cycles = res["cycles"]
    names = list(cycles[0]["targets"])
    ordered = [FLOOR, BARE, LEAN, *[n for n in names if n not in (FLOOR, BARE, LEAN)]]

    def col(name: str, key: str) -> list[float]:
        return [c["targets"][name][key] for c in cycles if key in c["targets"][name]]

    lines = [f"# Per-request overhead, interleaved ({res['cores']} cores)", "",
             f"`{res['command']}`, {res['started']}: every target up at once, {len(cycles)} cycles of "
             f"{res['seconds']:.0f} s of 32-connection JSON load on each in turn (order rotated each cycle); "
             f"model `{res['model']}`, access log {'on' if res['access_log'] else 'off'}. Medians over the cycles, "
             "range in brackets; ratios are taken within each cycle. overhead = (server CPU/request - raw ORT "
             "CPU/row at the server's mean batch) / the floor's CPU/request in the same cycle.", "",
             "Machine busy: the whole machine's share of CPU time in use (every process, wrk included); at "
             "100 % busy: vs one process / machine busy, the most the layout could reach at its CPU a request.", "",
             "| target | req/s | vs one process | machine busy | at 100 % busy, vs one process | p99 ms | CPU us/req "
             "| event-loop thread us/req | mean batch | raw ORT us/row at that batch | overhead / floor | CPU eff. "
             "| conns per process (last cycle) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ordered:
        def cell(key: str, fmt: str) -> str:
            values = col(name, key)
            # the loop thread is the started process's main thread: a supervisor's is idle, not shown
            shown = values and not (key == "loop_cpu_us_per_req" and statistics.median(values) < 1)
            return _median(values, fmt) if shown else ""
        conns = cycles[-1]["targets"][name]["connections_per_process"]
        lines.append(f"| {name} | {cell('req_s', '.0f')} | {cell('vs_one_process', '.2f')} | {cell('machine_busy', '.2f')} "
                     f"| {cell('vs_one_at_full_busy', '.2f')} | {cell('p99_ms', '.1f')} "
                     f"| {cell('cpu_us_per_req', '.0f')} | {cell('loop_cpu_us_per_req', '.0f')} | {cell('mean_batch', '.1f')} "
                     f"| {cell('raw_cpu_us_per_row', '.0f')} | {cell('overhead_x_floor', '.2f')} | {cell('cpu_efficiency', '.2f')} "
                     f"| {'/'.join(map(str, conns)) if len(conns) > 1 else ''} |")
    asgi = [c["targets"][FLOOR]["cpu_us_per_req"] - c["targets"][BARE]["cpu_us_per_req"] for c in cycles]
    raw = {case["batch"]: case["cpu_ms_per_seq"] * 1000
           for case in res["raw"][_settings_key({"workers": 1})]["cases"] if case["callers"] == 1}
    lines += ["", f"The ASGI server layer (floor - bare floor): {_median(asgi, '.0f')} us CPU/request. "
              "Raw ONNX Runtime, CPU us/row by batch (one process's settings), measured before the servers "
              "started: " + ", ".join(f"{b}: {us:.0f}" for b, us in sorted(raw.items())) + "."]
    in_cycles = {b: [case["cpu_ms_per_seq"] * 1000 for c in cycles if "raw" in c
                     for case in c["raw"][_settings_key({"workers": 1})]["cases"] if case["batch"] == b]
                 for b in RAW_BATCHES}
    if all(in_cycles.values()):
        lines.append("Measured again in every cycle (the overhead's reference), CPU us/row by batch, one process's "
                     "settings: " + ", ".join(f"{b}: {_median(v, '.0f')}" for b, v in in_cycles.items()) + ".")
    return "\n".join(lines) + "\n"
