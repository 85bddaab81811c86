"""Smoke test of the benchmark: ``python -m bench --quick`` on a tiny model, a few phases.

It checks the bench runs end to end and writes its report with finite ratio columns; it asserts
no performance figure (targets are reported by the full run, never asserted in timed tests).
"""

from __future__ import annotations

import json
import re
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.overhead import at_batch

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_quick_bench_writes_report(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install -y wrk): the closed loop needs it")
    pytest.importorskip("torch")  # the bench exports its model
    pytest.importorskip("matplotlib")
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench", "--quick", "--model", "tiny", "--groups", "main,off",
           "--clients", "1,8", "--duration", "1", "--idle-wait", "0", "--raw-seconds", "0.05", "--out", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for name in ("results.md", "results.json", "summary.md", "latency_vs_throughput.png", "batch_size_distribution.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    md = (out / "results.md").read_text()
    for col in ("of raw", "CPU eff.", "raw seq/s at batch", "server CPU-ms/req", "peak RSS MiB"):
        assert col in md, col
    data = json.loads((out / "results.json").read_text())
    closed = [r for r in data["phases"] if r.get("kind") == "closed"]
    # main: json+binary x 2 client counts; off: json x 2 + binary x 1
    assert len(closed) == 7 and not data["failures"]
    for r in closed:
        for key in ("seq_s", "p50_ms", "p99_ms", "mean_batch", "server_cpu_ms_per_req", "raw_seq_s", "of_raw",
                    "cpu_efficiency", "peak_rss_mib", "others_cores"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]), (r["name"], key, r[key])
        assert r["errors"] == 0, r["name"]


def test_scaleout_bench_reports_ratios_in_one_run(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install -y wrk): the closed loop needs it")
    pytest.importorskip("torch")  # the bench exports its model
    cmd = [sys.executable, "-m", "bench.scaleout", "--model", "tiny", "--seconds", "1", "--rounds", "1", "--out", str(tmp_path)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    data = json.loads((tmp_path / "scaleout.json").read_text())
    (rnd,) = data["rounds"]
    assert set(rnd["layouts"]) >= {"one process", "shared engine", "two copies"}
    for layout in rnd["layouts"].values():
        for phase in layout.values():
            assert phase["errors"] == 0 and phase["req_s"] > 0 and math.isfinite(phase["server_cpu_ms_per_req"])
    for key in ("shared_vs_one", "shared_vs_copies", "ipc_cpu_us_per_req_vs_copies", "ipc_added_latency_ms_lone"):
        assert math.isfinite(rnd["ratios"][key]), key
    assert "shared / one process" in (tmp_path / "scaleout.md").read_text()


def test_granian_bench_serves_the_real_app_under_both_servers(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install -y wrk): the closed loop needs it")
    pytest.importorskip("torch")  # the bench exports its model
    pytest.importorskip("granian", reason="granian comes with the bench extra: pip install -e '.[bench]'")
    cmd = [sys.executable, "-m", "bench.granian", "--models", "tiny", "--seconds", "1", "--rounds", "1", "--out", str(tmp_path)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = json.loads((tmp_path / "granian.json").read_text())
    assert {r["server"] for r in rows} == {"uvicorn (today)", "granian ASGI, 1 runtime thread", "granian ASGI, 2 runtime threads"}
    for r in rows:  # measure() refuses errors and non-2xx answers, so every row served the model
        assert r["req_s"] > 0 and math.isfinite(r["cpu_us_per_req"]), r
    assert "x uvicorn's throughput" in (tmp_path / "granian.md").read_text()


@pytest.mark.parametrize("interleave", [False, True], ids=["fresh-servers", "interleaved"])
def test_ab_bench_alternates_two_settings_and_reports_ratios(tmp_path: Path, interleave: bool) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install -y wrk): the closed loop needs it")
    pytest.importorskip("torch")  # the bench exports its model
    cmd = [sys.executable, "-m", "bench.ab", "--b", '{"max_batches_in_flight": 2}', "--model", "tiny",
           "--rounds", "2" if interleave else "1", "--seconds", "1", *(["--interleave"] if interleave else [])]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env={**os.environ, "TMPDIR": str(tmp)})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert not list(tmp.glob("bench-ab-*")), "a run that went well leaves its scratch folder behind"
    assert "round 1 A:" in p.stdout and "round 1 B:" in p.stdout and "errors 0" in p.stdout
    ratio = re.search(r"B/A req_s: median ([0-9.]+)", p.stdout)
    assert ratio and float(ratio.group(1)) > 0, p.stdout
    # The runtime's busy share, from the server's own histogram: some, and at one batch in flight
    # (A) at most the wall time (a batch that began just before the window may end inside it).
    busy = re.findall(r"round \d ([AB]):.*?ORT busy ([0-9.]+)", p.stdout)
    assert len(busy) == (4 if interleave else 2) and all(float(x) > 0 for _, x in busy), p.stdout
    assert all(float(x) <= 1.1 for label, x in busy if label == "A"), p.stdout
    if interleave:  # one server per setting for all rounds, so each pid shows up in both rounds
        # A then B, then B then A: coming second in a pair is no setting's advantage
        assert re.findall(r"round (\d) ([AB]):", p.stdout) == [("1", "A"), ("1", "B"), ("2", "B"), ("2", "A")], p.stdout
        pids = re.findall(r"round (\d) ([AB]):.*?busiest threads \(us/req\) (\d+)/", p.stdout)
        assert len(pids) == 4 and len({pid for _, label, pid in pids if label == "A"}) == 1, p.stdout
        assert {pid for _, label, pid in pids if label == "B"}.isdisjoint({pid for _, label, pid in pids if label == "A"})
        loop = re.search(r"B/A event-loop thread us/req: median ([0-9.]+)", p.stdout)
        assert loop and float(loop.group(1)) > 0, p.stdout


def test_oncpu_splits_the_loop_threads_cpu_by_library_for_floor_and_server() -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install -y wrk): the closed loop needs it")
    pytest.importorskip("torch")  # the bench exports its model
    from bench.oncpu import available

    if (why := available()) is not None:
        pytest.skip(why)
    cmd = [sys.executable, "-m", "bench.oncpu", "--seconds", "2"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = {m.group(1).strip(): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^(.{34}) +([0-9.]+) +([0-9.]+) +[-+][0-9.]+$", p.stdout, re.M)}
    floor, server = rows["all"]
    assert floor > 0 and server > 0, p.stdout
    # every sample lands in some library: the parts add up to the thread's CPU per request
    parts = [v for k, v in rows.items() if k != "all"]
    assert sum(f for f, _ in parts) == pytest.approx(floor, rel=0.05), p.stdout
    assert sum(s for _, s in parts) == pytest.approx(server, rel=0.05), p.stdout
    assert rows["Python interpreter (libpython)"][1] > 0, p.stdout


def test_overhead_interleaved_keeps_every_target_up_and_reports_medians(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install -y wrk): the closed loop needs it")
    pytest.importorskip("torch")  # the bench exports its model
    cmd = [sys.executable, "-m", "bench.overhead", "--interleave", "--model", "tiny", "--seconds", "1", "--rounds", "2",
           "--raw-seconds", "0.1", "--raw-cycle-seconds", "0.2", "--only", "one process", "--out", str(tmp_path), "--name", "ilv"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((tmp_path / "ilv.json").read_text())
    assert [c["cycle"] for c in res["cycles"]] == [1, 2]
    for cycle in res["cycles"]:
        t = cycle["targets"]
        assert set(t) == {"floor", "bare floor", "batching floor", "one process", "one process, binary"}
        assert all(m["errors"] == 0 and m["req_s"] > 0 for m in t.values())
        # the server and the batching floor batch; every ratio is taken against this cycle's floor
        assert t["one process"]["mean_batch"] >= 1 and t["batching floor"]["mean_batch"] >= 1
        for one in (t["one process"], t["one process, binary"]):
            assert one["overhead_x_floor"] == pytest.approx(one["overhead_us"] / t["floor"]["cpu_us_per_req"])
        # ... and against raw ONNX Runtime measured in this cycle
        raw = next(iter(cycle["raw"].values()))
        assert sorted(c["batch"] for c in raw["cases"]) == [4, 8, 16, 32]
        assert t["one process"]["raw_cpu_us_per_row"] == pytest.approx(at_batch(raw, t["one process"]["mean_batch"]) * 1000)
    text = (tmp_path / "ilv.md").read_text()
    assert "| batching floor |" in text and "The ASGI server layer (floor - bare floor)" in text
    assert "| one process, binary |" in text and "Measured again in every cycle" in text


def test_knockout_measures_the_entry_with_each_piece_replaced() -> None:
    pytest.importorskip("torch")  # the bench exports its model
    cmd = [sys.executable, "-m", "bench.knockout", "--model", "tiny", "--rounds", "2", "--requests", "300"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = {m.group(1).strip(): float(m.group(2)) for m in re.finditer(r"^(.{20}) +([0-9.]+) +saves", p.stdout, re.M)}
    assert set(rows) == {"everything", "no access log", "no request metrics", "bare decode"}, p.stdout
    assert all(v > 0 for v in rows.values()), p.stdout
