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


def perf_analyzer() -> tuple[tuple[str, dict[str, str]] | None, str]:
    """The perf_analyzer to run and its environment, else None and why not. .ci/run's install
    first (it brings the CUDA runtime the binary links); one on PATH only if it starts:
    tritonclient's own wheel puts a perf_analyzer in the venv's bin/ that cannot load without
    libcudart, and an activated venv puts it on PATH."""
    candidates = []
    if (LOCAL / "bin" / "perf_analyzer").is_file():
        env = dict(os.environ)
        cudart = LOCAL / "nvidia" / "cuda_runtime" / "lib"
        env["LD_LIBRARY_PATH"] = f"{cudart}:{env.get('LD_LIBRARY_PATH', '')}"
        candidates.append((str(LOCAL / "bin" / "perf_analyzer"), env))
    found = shutil.which("perf_analyzer")
    if found is not None:
        candidates.append((found, dict(os.environ)))
    why = "perf_analyzer not installed (.ci/run installs it into .venv/perf-analyzer)"
    for exe, env in candidates:
        probe = subprocess.run([exe, "--help"], env=env, capture_output=True, text=True, timeout=60)
        if "error while loading shared libraries" not in probe.stderr:
            return (exe, env), ""
        why = (f"{exe} cannot start ({probe.stderr.strip()[-200:]}); "
               ".ci/run installs one with its libraries into .venv/perf-analyzer")
    return None, why


TOOL, WHY_NOT = perf_analyzer()


@pytest.mark.skipif(TOOL is None, reason=WHY_NOT)
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


def _run_grpc(server: Server, tmp_path: Path, model: str, features: int, *extra: str) -> str:
    assert TOOL is not None
    exe, env = TOOL
    data = tmp_path / f"{model}.json"
    data.write_text(json.dumps({"data": [{"input": {"content": [float(i % 7) for i in range(3 * features)],
                                                    "shape": [1, 3, features]}}]}))
    proc = subprocess.run(
        [exe, "-m", model, "-u", server.grpc_target, "-i", "grpc", "--input-data", str(data),
         "--measurement-mode", "count_windows", "--measurement-request-count", "100",
         "--stability-percentage", "1000", "--max-trials", "10", *extra],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.skipif(TOOL is None, reason=WHY_NOT)
@pytest.mark.parametrize(("model", "features"), [("demo", 4), ("bi", 3)])
def test_perf_analyzer_over_grpc_at_concurrency_1_to_16(server: Server, tmp_path: Path, model: str, features: int) -> None:
    out = _run_grpc(server, tmp_path, model, features, "--concurrency-range", "1:16:5")
    levels = re.findall(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec", out)
    assert [int(c) for c, _ in levels] == [1, 6, 11, 16] and all(float(t) > 0 for _, t in levels)
    # the requests perf_analyzer counted succeeded, as the statistics extension (over gRPC) says
    # (its two counts are read at slightly different moments: up to one request per client apart)
    for client, served in re.findall(r"Request count: (\d+).*?Successful request count: (\d+)", out, re.S):
        assert int(served) >= int(client) - 16


@pytest.mark.skipif(TOOL is None, reason=WHY_NOT)
def test_perf_analyzer_sequence_mode_over_grpc_on_a_stateful_model(server: Server, tmp_path: Path) -> None:
    out = _run_grpc(server, tmp_path, "uni", 3, "--concurrency-range", "4", "--sequence-length", "5")
    requests = int(re.search(r"Request count: (\d+)", out)[1])
    sequences = int(re.search(r"Sequence count: (\d+)", out)[1])
    assert sequences > 0 and 3 <= requests / sequences <= 7, out[-2000:]  # about 5 chunks per sequence
    assert int(re.search(r"Successful request count: (\d+)", out)[1]) >= requests - 4
