"""Shared fixtures: tiny real models exported once per session, and a real server process.

Nothing here is mocked: models are exported from PyTorch by the real exporter, inference runs
in real ONNX Runtime, and servers are real ``python -m app`` processes on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running ``python -m app`` on 127.0.0.1."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(repository: Path, log_dir: Path, **settings: object) -> Server:
    """Start a server with ``LSTM_SERVE_*`` settings and wait until it reports ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_SERVE_")}
    env.update(
        {
            "LSTM_SERVE_MODEL_REPOSITORY": str(repository),
            "LSTM_SERVE_HOST": "127.0.0.1",
            "LSTM_SERVE_PORT": str(port),
        }
    )
    env.update({f"LSTM_SERVE_{k.upper()}": str(v) for k, v in settings.items()})
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"], env=env, cwd=ROOT, stdout=log_path.open("wb"), stderr=subprocess.STDOUT
    )
    server = Server(proc, port, log_path, {k: str(v) for k, v in settings.items()})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready in 90 s:\n{server.log()[-4000:]}")


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with the shipped demo and two freshly exported tiny models:

    ``uni``: 2-layer unidirectional many-to-one (stateful); ``bi``: 2-layer bidirectional
    many-to-many.
    """
    from export.testing import make_model

    repo = tmp_path_factory.mktemp("repo")
    make_model(repo, "uni", num_layers=2, hidden_size=16, input_size=3, output_size=2,
               bidirectional=False, task="many_to_one", seed=1)
    make_model(repo, "bi", num_layers=2, hidden_size=8, input_size=3, output_size=2,
               bidirectional=True, task="many_to_many", seed=2)
    shutil.copytree(DEMO, repo / "demo")
    return repo


@pytest.fixture(scope="session")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with default settings, shared by the tests that only read from it."""
    srv = start_server(model_repo, tmp_path_factory.mktemp("logs"))
    yield srv
    srv.stop()


class Reference:
    """Each sequence run *alone* (batch 1, its own length) in raw ONNX Runtime: the answer a
    batched server must reproduce."""

    def __init__(self, repo: Path) -> None:
        import onnxruntime as ort

        from app.contract import ModelSpec

        self._sessions = {}
        for path in sorted(repo.glob("*/*/model.onnx")):
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            spec = ModelSpec.from_metadata(dict(sess.get_modelmeta().custom_metadata_map))
            self._sessions[path.parent.parent.name] = (sess, spec)

    def spec(self, model: str):
        return self._sessions[model][1]

    def run(self, model: str, x: np.ndarray, h0: np.ndarray | None = None, c0: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Run one sequence ``x`` [time, features]."""
        sess, spec = self._sessions[model]
        feeds = {"input": x[None].astype(np.float32), "sequence_lens": np.array([len(x)], np.int32)}
        if spec.stateful:
            feeds["initial_h"] = spec.zero_state(1) if h0 is None else h0
            feeds["initial_c"] = spec.zero_state(1) if c0 is None else c0
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds)))


@pytest.fixture(scope="session")
def reference(model_repo: Path) -> Reference:
    return Reference(model_repo)
