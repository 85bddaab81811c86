"""Smoke test of ``python -m bench.overload`` (issue 15, item 5): a short run end to end.

Asserts what must hold at any load on any machine (nothing lost, every refusal a complete 503
with Retry-After, every admitted answer exact, full recovery); the latency figures are the full
run's to report (bench/README.md), never asserted in a timed test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_short_overload_run_loses_nothing_and_recovers() -> None:
    cmd = [sys.executable, "-m", "bench.overload", "--seconds", "1.5", "--probe-seconds", "0.5", "--conns", "128"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=170, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["requests"] > 100 and out["admitted"] > 0 and out["refused_503"] > 0, out
    targets = out["targets"]
    for name in ("no_request_lost", "every_503_has_retry_after", "admitted_exact", "recovered"):
        assert targets[name], (name, out)
