"""Shared fixtures: tiny real models exported once per session, and a real server process.

Nothing here is mocked: models are exported from PyTorch by the real exporter, inference runs
in real ONNX Runtime, and servers are real ``python -m app`` processes on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from app.testing import ROOT, ServerProcess, free_port
from app.testing import start_server as _start

__all__ = ["ROOT", "Reference", "Server", "alive", "free_port", "start_server"]
DEMO = ROOT / "models" / "demo"


class Server(ServerProcess):
    """A test server: a ServerProcess plus its /metrics text."""

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def log_lines(self) -> list[dict]:
        """The server's JSON log lines (every process of it writes to the same log)."""
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    out.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    pass
        return out

    def processes(self) -> tuple[int, list[int]]:
        """A multi-process server's engine pid and first workers' pids, from the supervisor's log."""
        lines = self.log_lines()
        engine = next(d["pid"] for d in lines if d.get("msg") == "engine started")
        workers = next(d["workers"] for d in lines if d.get("msg") == "supervising")
        return engine, workers


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def start_server(repository: Path, log_dir: Path, **settings: object) -> Server:
    proc = _start(repository, log_dir, **settings)
    return Server(proc.proc, proc.port, proc.log_path, proc.settings, proc.grpc_port)


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
        from app.contract import feeds

        sess, spec = self._sessions[model]
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds(spec, x[None], initial_h=h0, initial_c=c0)), strict=True))


@pytest.fixture(scope="session")
def reference(model_repo: Path) -> Reference:
    return Reference(model_repo)
