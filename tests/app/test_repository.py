"""The model repository: what is loaded by default and on request, and starts that refuse
with a message naming the model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.engine.repository import RepositoryError, discover
from tests.conftest import ROOT, free_port, start_server


def test_discover_lists_versions_with_an_artifact(model_repo: Path, tmp_path: Path) -> None:
    shutil.copytree(model_repo / "uni", tmp_path / "m")
    (tmp_path / "m" / "7").mkdir()  # no model.onnx: not a version
    (tmp_path / "m" / "notes").mkdir()
    shutil.copytree(tmp_path / "m" / "1", tmp_path / "m" / "3")
    assert discover(tmp_path) == {"m": [1, 3]}
    with pytest.raises(RepositoryError, match="does not exist"):
        discover(tmp_path / "nowhere")
    with pytest.raises(RepositoryError, match="holds no"):
        discover(tmp_path / "m" / "7")


def test_latest_version_by_default_and_configured_versions(model_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "uni", repo / "uni")
    shutil.copytree(repo / "uni" / "1", repo / "uni" / "2")
    srv = start_server(repo, tmp_path, warmup="false")
    try:
        assert httpx.get(f"{srv.url}/v2/models/uni").json()["versions"] == ["2"]
        assert httpx.get(f"{srv.url}/v2/models/uni/versions/1").status_code == 404
    finally:
        srv.stop()
    srv = start_server(repo, tmp_path, warmup="false", model_versions='{"uni": [1, 2]}')
    try:
        meta = httpx.get(f"{srv.url}/v2/models/uni/versions/1").json()
        assert meta["versions"] == ["1", "2"] and meta["parameters"]["version"] == "1"
        assert 'version="1"' in srv.metrics() and 'version="2"' in srv.metrics()
    finally:
        srv.stop()


def _start_fails(repo: Path, **env: str) -> str:
    full = {"LSTM_SERVE_MODEL_REPOSITORY": str(repo), "LSTM_SERVE_PORT": str(free_port()), "PATH": "/usr/bin:/bin"}
    full.update({f"LSTM_SERVE_{k.upper()}": v for k, v in env.items()})
    proc = subprocess.run([sys.executable, "-m", "app"], env=full, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


def test_a_model_that_cannot_load_stops_the_start_naming_it(tmp_path: Path) -> None:
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    assert "cannot serve model 'broken' version 1" in _start_fails(tmp_path)


def test_a_missing_configured_version_stops_the_start(model_repo: Path) -> None:
    assert "model 'uni' has no version(s) [5]" in _start_fails(model_repo, model_versions='{"uni": [5]}')
