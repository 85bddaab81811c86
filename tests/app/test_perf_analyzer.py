"""Triton's perf_analyzer, unmodified, against the real server: it reads the model
configuration, drives the model with a data file that gives only ``input`` (binary and JSON
tensors), and reads the statistics extension back (its "Server:" section).

perf_analyzer is a native binary. .ci/run installs the last tritonclient wheel that ships it
built for Debian 12's glibc (2.44, manylinux1) into .venv/perf-analyzer, with the two shared
libraries it links (Debian's libb64-0d, and the CUDA runtime from its PyPI wheel: no GPU is
used); the test skips, saying so, where it is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tritonclient.http as triton

from tests.conftest import ROOT, Server

LOCAL = ROOT / ".venv" / "perf-analyzer"


def perf_analyzer() -> tuple[str, dict[str, str]] | None:
    env = dict(os.environ)
    found = shutil.which("perf_analyzer")
    if found is None and (LOCAL / "bin" / "perf_analyzer").is_file():
        found = str(LOCAL / "bin" / "perf_analyzer")
        cudart = LOCAL / "nvidia" / "cuda_runtime" / "lib"
        env["LD_LIBRARY_PATH"] = f"{cudart}:{env.get('LD_LIBRARY_PATH', '')}"
    return (found, env) if found else None


TOOL = perf_analyzer()


@pytest.mark.skipif(TOOL is None, reason="perf_analyzer not installed (.ci/run installs it into .venv/perf-analyzer)")
@pytest.mark.parametrize("tensor_format", ["binary", "json"])
def test_perf_analyzer_runs_unmodified(server: Server, tmp_path: Path, tensor_format: str) -> None:
    assert TOOL is not None
    exe, env = TOOL
    data = tmp_path / "input.json"
    values = [float(i % 7) for i in range(1 * 12 * 4)]
    data.write_text(json.dumps({"data": [{"input": {"content": values, "shape": [1, 12, 4]}}]}))
    before = triton.InferenceServerClient(server.hostport).get_inference_statistics("demo")["model_stats"][0]
    proc = subprocess.run(
        [
            # Any three windows count as stable: this checks that it runs, not how fast (shared CI cores).
            exe, "-m", "demo", "-u", server.hostport, "-i", "http", "--input-data", str(data),
            "--input-tensor-format", tensor_format, "--output-tensor-format", tensor_format,
            "--concurrency-range", "2", "--measurement-mode", "count_windows",
            "--measurement-request-count", "200", "--stability-percentage", "1000", "--max-trials", "10",
        ],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    throughput = float(re.search(r"Throughput: ([\d.]+) infer/sec", proc.stdout)[1])
    assert throughput > 0
    # perf_analyzer read the statistics extension and found the requests it sent.
    server_count = int(re.search(r"Server:\s+Inference count: (\d+)", proc.stdout)[1])
    assert server_count >= 200
    after = triton.InferenceServerClient(server.hostport).get_inference_statistics("demo")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] >= server_count
