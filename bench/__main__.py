"""``python -m bench``: the whole benchmark in one command (see bench/README.md).

    python -m bench                      # full run, ~12-15 min on 2 cores -> bench/results/
    python -m bench --quick              # short phases (smoke test, GPU machine)
    python -m bench --providers cuda     # the same against the CUDA execution provider
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path

from . import load, proc
from . import report as rep
from .suite import Bench, Phase, effective_settings

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"
GROUPS = ("curve", "main", "open", "mix", "off", "tuning", "profile")

# The model: 3 layers, hidden 128, 8 features, many-to-one (50 steps a request).
MODELS = {
    "bench": dict(num_layers=3, hidden_size=128, input_size=8, output_size=1, task="many_to_one", seed=0),
    "tiny": dict(num_layers=1, hidden_size=16, input_size=8, output_size=1, task="many_to_one", seed=0),
}

# Tuning grid at 32 clients, v2 JSON (item 5): each entry is run unless it equals the defaults.
# ``lone`` entries are also run with one client (they change what a lone client pays).
GRID: list[tuple[dict, bool]] = [
    ({"intra_op_threads": 1}, True),
    ({"intra_op_threads": 0, "allow_spinning": False}, True),
    ({"intra_op_threads": 0, "allow_spinning": True}, True),
    ({"intra_op_threads": 0, "allow_spinning": False, "max_batches_in_flight": 1}, False),
    ({"max_batches_in_flight": 1}, False),
    ({"max_batches_in_flight": 2}, False),
    ({"max_batches_in_flight": 3}, False),
    ({"max_queue_delay_ms": 0.0}, False),
    ({"max_queue_delay_ms": 2.0}, False),
    ({"max_queue_delay_ms": 5.0}, False),
    ({"dispatch_when_idle": False}, True),
    ({"dispatch_when_idle": True}, True),
    ({"access_log": False}, False),
    ({"access_log": True}, False),
]


def label(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"


def model_path(kind: str) -> Path:
    """Export the bench model once into bench/.cache (git-ignored) and return its path."""
    repo = CACHE / f"repo-{kind}"
    path = repo / "bench" / "1" / "model.onnx"
    if not path.exists():
        from export.testing import make_model

        repo.mkdir(parents=True, exist_ok=True)
        made = make_model(repo, "bench", version=1, **MODELS[kind])
        assert made == path, (made, path)
    return path


def plan(args: argparse.Namespace) -> list[Phase]:
    phases: list[Phase] = []
    g = set(args.groups)
    c32 = 32 if 32 in args.clients else max(args.clients)
    if "main" in g:
        for enc in ("json", "binary"):
            for c in args.clients:
                phases.append(Phase(f"defaults {enc} c={c}", "main", "defaults", {}, enc, clients=c))
    if "open" in g:
        phases.append(Phase("open-loop generator ceiling (GET /v2/health/live)", "open", "defaults", {}, rate=0))
        # rates are filled in from the 32-client JSON result when the phase comes up
        for f in ((0.5,) if args.quick else (0.25, 0.5, 0.75, 0.9)):
            phases.append(Phase(f"open loop json {f:.0%} of closed-loop max", "open", "defaults", {}, rate=-f))
    if "mix" in g:
        phases.append(Phase(f"defaults json uniform c={c32}", "mix", "defaults", {}, mix="uniform", clients=c32, instance="uniform"))
        phases.append(Phase(f"defaults json longtail c={c32}", "mix", "defaults", {}, mix="longtail", clients=c32, instance="longtail"))
        if not args.quick:
            ov = {"cpu_mem_arena": True}
            phases.append(Phase(f"cpu_mem_arena=True json longtail c={c32}", "mix", label(ov), ov, mix="longtail", clients=c32))
    if "off" in g:
        ov = {"max_batch_size": 1}
        for c in args.clients:
            phases.append(Phase(f"batching off json c={c}", "off", "batching off", ov, clients=c))
        phases.append(Phase(f"batching off binary c={c32}", "off", "batching off", ov, "binary", clients=c32))
    if "tuning" in g:
        defaults = effective_settings({})
        for ov, lone in GRID:
            if all(defaults[k] == v for k, v in ov.items()):
                continue  # that is the defaults row
            for c in ([1, c32] if lone else [c32]):
                phases.append(Phase(f"{label(ov)} json c={c}", "tuning", label(ov), ov, clients=c))
    return phases


def machine_info(args: argparse.Namespace) -> dict:
    import numpy
    import onnxruntime
    import uvicorn

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"

    return {
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__, "uvicorn": uvicorn.__version__,
        "uvloop": ver("uvloop"), "httptools": ver("httptools"), "fastapi": ver("fastapi"), "orjson": ver("orjson"),
        "wrk": load.wrk_version(),
        "providers_available": onnxruntime.get_available_providers(),
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "duration_s": args.duration, "raw_seconds": args.raw_seconds, "idle_wait_s": args.idle_wait,
        "model": args.model, "model_spec": MODELS[args.model], "defaults": {
            k: v for k, v in effective_settings({}).items()
            if k in ("max_batch_size", "max_queue_delay_ms", "dispatch_when_idle", "max_batches_in_flight",
                     "intra_op_threads", "allow_spinning", "cpu_mem_arena", "access_log", "max_queue_size")},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short phases and a small grid (smoke test, GPU run)")
    ap.add_argument("--duration", type=float, help="seconds of measured load per phase (default 8, quick 2)")
    ap.add_argument("--providers", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--clients", default="1,8,32,128", help="closed-loop client counts")
    ap.add_argument("--groups", default=",".join(GROUPS), help=f"phase groups to run, of {','.join(GROUPS)}")
    ap.add_argument("--model", choices=sorted(MODELS), default="bench")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--idle-wait", type=float, help="longest wait for an idle machine before a phase (s)")
    ap.add_argument("--raw-seconds", type=float, help="seconds per raw ORT batch size")
    ap.add_argument("--profile-seconds", type=float, default=None)
    args = ap.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.groups = [g for g in args.groups.split(",") if g]
    bad = set(args.groups) - set(GROUPS)
    if bad:
        ap.error(f"unknown groups {sorted(bad)}")
    args.duration = args.duration or (2.0 if args.quick else 8.0)
    args.idle_wait = args.idle_wait if args.idle_wait is not None else (3.0 if args.quick else 60.0)
    args.raw_seconds = args.raw_seconds or (0.1 if args.quick else 0.25)
    args.profile_seconds = args.profile_seconds or (3.0 if args.quick else 12.0)
    if load.wrk_path() is None:
        print("wrk not found: install it (apt-get install -y wrk)", file=sys.stderr)
        return 2
    if args.providers == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            print("--providers cuda: this onnxruntime has no CUDAExecutionProvider "
                  f"({onnxruntime.get_available_providers()}); install onnxruntime-gpu", file=sys.stderr)
            return 2

    out: Path = args.out
    raw_dir = out / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    scratch = CACHE / "run"
    scratch.mkdir(parents=True, exist_ok=True)
    path = model_path(args.model)
    bench = Bench(args, path, scratch)
    info = machine_info(args)
    results: dict = {"machine": info, "phases": [], "curve": None, "profile": None, "failures": []}
    t_start = time.monotonic()

    def save() -> None:
        results["elapsed_s"] = round(time.monotonic() - t_start, 1)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        rep.write_all(results, out)

    try:
        if "curve" in args.groups:
            print("raw ONNX Runtime batch curve ...", flush=True)
            proc.wait_idle(args.idle_wait)
            results["curve"] = bench.raw_curve({}, args.raw_seconds * 2)
        phases = plan(args)
        for i, ph in enumerate(phases, 1):
            if ph.rate is not None and ph.rate < 0:
                ref = [r for r in results["phases"] if r["group"] == "main" and r["encoding"] == "json"
                       and r.get("seq_s")]
                top = max((r["seq_s"] for r in ref), default=200.0)
                ph.rate = round(-ph.rate * top)
            print(f"[{i}/{len(phases)}] {ph.name} ...", flush=True)
            try:
                r = bench.run_phase(ph)
            except Exception as exc:  # one failed phase must not lose the rest of the run
                traceback.print_exc()
                results["failures"].append({"phase": ph.name, "error": repr(exc)})
                bench.stop_server()
                continue
            results["phases"].append(r)
            print("    " + rep.one_line(r), flush=True)
            save()
        bench.stop_server()
        if "profile" in args.groups:
            print("py-spy profile, defaults, 32 clients, v2 JSON ...", flush=True)
            results["profile"] = bench.profile(args.profile_seconds, raw_dir / "profile-json-c32.txt")
    finally:
        bench.stop_server()
        save()
    print(f"wrote {out}/results.md, results.json and plots in {results['elapsed_s']} s")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
