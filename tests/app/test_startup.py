"""Start-up failures, run as an operator meets them: the real ``python -m app``, one line that
names the problem and the fix, exit status 2 for a bad setting and 1 otherwise, no traceback;
"ready" only once the port is bound; and the default repository found from any directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.testing import free_port
from tests.conftest import ROOT


def run_app(tmp_path: Path, *args: str, timeout: float = 60, **settings: object) -> subprocess.CompletedProcess[str]:
    """``python -m app`` from a directory outside the checkout, with only these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_SERVE_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update({f"LSTM_SERVE_{k.upper()}": str(v) for k, v in settings.items()})
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr and '"exc"' not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lstm-serve: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.parametrize(
    ("settings", "args", "words"),
    [
        ({"max_batch_size": "zero"}, (), ["max_batch_size (--max-batch-size / LSTM_SERVE_MAX_BATCH_SIZE)", "'zero'", "--help"]),
        ({"max_batch_size": "64", "max_queue_size": "8"}, (), ["max_queue_size (8) must be >= max_batch_size (64)"]),
        ({"model_versions": "{not json"}, (), ["LSTM_SERVE_MODEL_VERSIONS", "--help"]),
        ({}, ("--providers", "tpu"), ["providers", "'tpu'"]),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(tmp_path: Path, settings: dict, args: tuple, words: list[str]) -> None:
    proc = run_app(tmp_path, *args, **settings)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc)
    assert "invalid setting" in line
    for word in words:
        assert word in line, line


def test_a_missing_repository_is_one_line_and_exit_1(tmp_path: Path) -> None:
    proc = run_app(tmp_path, model_repository=tmp_path / "nowhere", port=free_port(), host="127.0.0.1")
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc)
    assert f"model repository {tmp_path / 'nowhere'} does not exist" in line
    assert "--model-repository / LSTM_SERVE_MODEL_REPOSITORY" in line


def test_a_taken_port_is_one_line_exit_1_and_never_ready(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = run_app(tmp_path, port=port, host="127.0.0.1")
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port / LSTM_SERVE_PORT" in line
    assert '"msg":"ready"' not in proc.stderr and '"loaded model"' not in proc.stderr  # fails before loading


def test_the_default_repository_is_found_from_any_directory(tmp_path: Path) -> None:
    """No LSTM_SERVE_MODEL_REPOSITORY, started outside the checkout: the shipped demo model
    serves, and "ready" is logged only after the socket listens."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_SERVE_")}
    env.update({"PYTHONPATH": str(ROOT), "LSTM_SERVE_PORT": str(port), "LSTM_SERVE_HOST": "127.0.0.1"})
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while '"msg":"ready"' not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        # Logged ready: the port answers at once, no retry needed.
        assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/v2/models/demo", timeout=5).json()["name"] == "demo"
        assert f'"repository":"{ROOT / "models"}"' in log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_grpc_port_is_one_line_exit_1_before_loading(tmp_path: Path, workers: str) -> None:
    """The gRPC port is checked with the HTTP one, before models load: one line, the flag named."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = run_app(tmp_path, port=free_port(), grpc_port=port, host="127.0.0.1", workers=workers)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--grpc-port / LSTM_SERVE_GRPC_PORT" in line
    assert '"msg":"ready"' not in proc.stderr and '"loaded model"' not in proc.stderr
