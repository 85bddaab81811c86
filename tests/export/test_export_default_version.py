"""Exporting a precision variant does not change what unversioned requests get (unless asked):
the exporter pins the fp32 version in the model's settings.json, and a real server then serves
fp32 unversioned and the variant at its versioned path."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.testing import make_model
from tests.conftest import start_server


def _default(repo: Path) -> int | None:
    path = repo / "m" / "settings.json"
    return json.loads(path.read_text()).get("default_version") if path.exists() else None


def test_an_int8_variant_keeps_unversioned_requests_on_fp32(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_model(repo, "m", seed=3)
    assert _default(repo) is None  # a plain fp32 export needs no pin: the newest serves
    make_model(repo, "m", seed=3, precision="int8")
    assert _default(repo) == 1, "the int8 variant took over unversioned requests"

    srv = start_server(repo, tmp_path / "logs")
    try:
        x = np.zeros((1, 5, 3), np.float32).ravel().tolist()
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 5, 3], "data": x}]}
        assert httpx.post(srv.url + "/v2/models/m/infer", json=body).json()["model_version"] == "1"
        assert httpx.post(srv.url + "/v2/models/m/versions/2/infer", json=body).json()["model_version"] == "2"
        index = httpx.post(srv.url + "/v2/repository/index").json()
        assert {(e["version"], e["state"]) for e in index} == {("1", "READY"), ("2", "READY")}
    finally:
        srv.stop()

    # Asked for: the variant becomes the default; a new fp32 export then becomes it again.
    make_model(repo, "m", seed=3, precision="int8", default=True)
    assert _default(repo) == 3
    make_model(repo, "m", seed=4)
    assert _default(repo) == 4
