"""``bench.instructions`` for real, small: a server and the floors under callgrind, a few requests
each. What its numbers rest on: instrumentation is on while the requests are answered (and only
then), every answer was a 200, and the batches are read from the server's own metrics. No count
is asserted beyond what a broken measurement would miss."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.testing import ROOT

pytestmark = pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("callgrind_control") is None,
                                reason="valgrind is not installed (apt-get install valgrind; .ci/run installs it)")


def test_counts_the_server_and_the_floors_per_request() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.instructions", "--requests", "40", "--warm", "8",
                          "--clients", "4", "--top", "3", "--lean", "--floor", "--raw"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {m.group(1).strip(): [float(v.replace(",", "")) for v in m.group(2, 3, 4, 5)]
            for m in re.finditer(r"^(.{40}) +([\d,]+) +([\d,]+) +([\d,]+) +([\d.]+|nan)$", out.stdout, re.M)}
    server = next(v for k, v in rows.items() if k.endswith(ROOT.name))
    floor = rows["floor (bench.floor)"]
    lean = rows["batching floor (bench.lean)"]
    # Answering a JSON request of 8 KB takes far more than 100k instructions on the event loop;
    # with instrumentation off (or on only at the edges) the count per request would be ~0.
    assert server[0] > 100_000 and floor[0] > 100_000, out.stdout
    assert server[1] > 0 and floor[1] == 0  # the server's batches ran on its runtime thread; the floor has none
    assert 1 <= server[3] <= 4  # mean batch from the server's metrics: 4 connections, at most 4 a batch
    # the batching floor, counted on its own (not the server's files again: same port, new run)
    # with its batches on its worker thread, read from its /stats
    assert lean[0] > 100_000 and lean[1] > 0 and 1 <= lean[3] <= 4, out.stdout
    assert lean[:3] != server[:3]
    assert re.search(r"^event loop / floor: .* \d+\.\d\dx$", out.stdout, re.M), out.stdout
    assert "event-loop thread, top functions (self)" in out.stdout
    # --raw: raw ONNX Runtime counted at the server's mean batch, some instructions a row (the
    # tiny model's are tens of thousands; a count of the start-up alone would cancel to ~0), and
    # the overhead ratio from the three counts printed above
    raw = re.search(r"^raw ONNX Runtime, batch (\d+) of 50 steps, .*: ([\d,]+) a row$", out.stdout, re.M)
    assert raw and 1 <= int(raw.group(1)) <= 4 and float(raw.group(2).replace(",", "")) > 1_000, out.stdout
    ratio = re.search(rf"{re.escape(ROOT.name)}: process - raw ([\d,]+) a request, (\d+\.\d\d)x the floor's", out.stdout)
    assert ratio, out.stdout
    assert re.search(r"^batching floor \(bench\.lean\): process - raw [\d,]+ a request, \d+\.\d\dx the floor's",
                     out.stdout, re.M), out.stdout
    raw_row = float(raw.group(2).replace(",", ""))
    assert float(ratio.group(1).replace(",", "")) == pytest.approx(server[2] - raw_row, abs=1)
    assert float(ratio.group(2)) == pytest.approx((server[2] - raw_row) / floor[2], abs=0.006)


def test_counts_every_process_of_the_shared_engine_by_role(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.instructions", "--requests", "40", "--warm", "8",
                          "--clients", "4", "--top", "0", "--settings", '{"workers": 2}', "--keep", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    roles = re.findall(r"^  (\S+) +([\d,]+) +([\d,]+)$", out.stdout, re.M)
    loops = {}
    for role, loop, _ in roles:
        loops.setdefault(role, []).append(float(loop.replace(",", "")))
    # both HTTP workers answered requests, and the engine process ran their batches
    assert len(loops.get("lstm-serve-http", [])) == 2 and min(loops["lstm-serve-http"]) > 10_000, out.stdout
    assert loops.get("lstm-serve-eng", [0])[0] > 10_000, out.stdout
    # --keep: the files to annotate further, one per thread of each counted process, each with its count
    kept = [f for f in tmp_path.glob("cg-*.*.1-*") if re.search(r"^totals: *[1-9]", f.read_text(errors="replace"), re.M)]
    assert len({f.name.split(".")[1] for f in kept}) >= 3, sorted(f.name for f in tmp_path.iterdir())


def test_counts_binary_requests() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.instructions", "--requests", "40", "--warm", "8",
                          "--clients", "4", "--top", "0", "--encoding", "binary", "--cache"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    # every answer a 200 (the drive raises on anything else), so the binary request was sent right
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"one 1\d{3}-byte binary sequence a request", out.stdout), out.stdout  # 1,600 bytes of data
    # --cache: the event loop's simulated L1 misses, on the same instructions as the count above
    # (a run without --cache-sim has no miss events, and would print zeros)
    counted = re.search(r"^.{40} +([\d,]+) +[\d,]+ +[\d,]+ +[\d.]+$", out.stdout, re.M)
    cache = re.search(r"^.{40} +([\d,]+) +([\d,]+) +([\d,]+) +([\d,]+)$", out.stdout.split("simulated caches")[-1], re.M)
    assert counted and cache, out.stdout
    instructions, i1, d1r, d1w = (float(v.replace(",", "")) for v in cache.groups())
    assert instructions == float(counted.group(1).replace(",", ""))
    assert 0 < i1 < instructions and 0 < d1r < instructions and 0 < d1w < instructions, out.stdout
    row = re.search(rf"^.{{0,40}}{re.escape(ROOT.name)} +([\d,]+) ", out.stdout, re.M)
    assert row and float(row.group(1).replace(",", "")) > 50_000, out.stdout
    refused = subprocess.run([sys.executable, "-m", "bench.instructions", "--floor", "--encoding", "binary"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--floor and --lean count the floors' JSON request" in refused.stderr
