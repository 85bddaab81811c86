"""Optional bearer-token authentication on a real server (issue 15, item 4)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from pydantic import ValidationError

from app.http.auth import BearerAuth, TokenError, load_token, protects
from app.config import Settings
from app.v2.errors import Unauthorized
from tests.conftest import Server, start_server
from tests.rawhttp import exchange, request_bytes

TOKEN = "s3cret-token_0123456789"
INFER = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2, 4], "data": [0.5] * 8}]}
PROTECTED = [
    ("POST", "/v2/models/demo/infer"),
    ("POST", "/v2/models/demo/versions/1/infer"),
    ("GET", "/v2/models/demo"),
    ("GET", "/v2/models/demo/versions/1"),
    ("GET", "/v2/models/demo/ready"),
    ("GET", "/v2/models/demo/config"),
    ("GET", "/v2/models/demo/stats"),
    ("GET", "/v2/models/stats"),
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/demo/load"),
    ("GET", "/v2"),
]


@pytest.fixture(scope="module")
def locked(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    secret = tmp_path_factory.mktemp("secret") / "token"
    secret.write_text(TOKEN + "\n")  # as `kubectl create secret --from-file` leaves it
    srv = start_server(model_repo, tmp_path_factory.mktemp("logs"), api_key_file=secret)
    yield srv
    srv.stop()


def call(server: Server, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = INFER if path.endswith("/infer") else None
    return httpx.request(method, server.url + path, json=body, headers=headers, timeout=10)


@pytest.mark.parametrize(
    "headers",
    [None, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"},
     {"Authorization": TOKEN}, {"Authorization": f"Bearer {TOKEN}x"}, {"X-API-Key": TOKEN}],
    ids=["missing", "wrong", "basic", "empty", "no-scheme", "longer", "other-header"],
)
def test_protected_endpoints_answer_401_with_a_bearer_challenge(locked: Server, headers: dict[str, str] | None) -> None:
    for method, path in PROTECTED:
        resp = call(locked, method, path, headers)
        assert resp.status_code == 401, (method, path, resp.text)
        assert resp.headers["www-authenticate"].startswith("Bearer"), resp.headers
        assert resp.json()["error"]


def test_the_right_token_opens_every_served_endpoint(locked: Server) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/v2", "/v2/models/demo", "/v2/models/demo/versions/1/ready"):
        assert call(locked, "GET", path, auth).status_code == 200, path
    resp = call(locked, "POST", "/v2/models/demo/infer", {"Authorization": f"bearer {TOKEN}"})  # scheme is case-insensitive
    assert resp.status_code == 200 and resp.json()["outputs"][0]["shape"] == [1, 1]
    assert 'error="invalid_token"' in call(locked, "GET", "/v2/models/demo", {"Authorization": "Bearer x"}).headers["www-authenticate"]


def test_health_metrics_and_docs_stay_open(locked: Server) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/openapi.json"):
        assert httpx.get(locked.url + path, timeout=10).status_code == 200, path


def test_encoded_paths_are_protected_too(locked: Server) -> None:
    for target in (b"/%76%32/models/demo", b"/v2/models/%64emo/infer", b"/v2/health/../models/demo"):
        resp = exchange(locked.hostport, request_bytes("POST" if target.endswith(b"infer") else "GET", target))
        assert resp.status in (401, 404), (target, resp)
        assert resp.status == 401 or target.startswith(b"/v2/health/"), (target, resp)


def test_a_refused_upload_is_answered_not_reset(locked: Server) -> None:
    big = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 50_000, 4],
                                  "data": [0.25] * 200_000}]}).encode()
    resp = exchange(locked.hostport, request_bytes("POST", b"/v2/models/demo/infer", {"Content-Type": "application/json"}, big))
    assert resp.status == 401


def test_tritonclient_with_the_token_in_its_headers(locked: Server) -> None:
    client = triton.InferenceServerClient(url=locked.hostport)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    x = np.full((2, 3, 4), 0.5, np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    assert client.infer("demo", [inp], headers=auth).as_numpy("output").shape == (2, 1)
    with pytest.raises(triton.InferenceServerException, match="credentials"):
        client.infer("demo", [inp])
    client.close()


def test_token_settings(tmp_path: Path) -> None:
    assert load_token(Settings()) is None
    assert load_token(Settings(api_key=" abc ")) == b"abc"
    f = tmp_path / "t"
    f.write_text("tok\n")
    assert load_token(Settings(api_key_file=f)) == b"tok"
    f.write_text("\n")
    with pytest.raises(TokenError, match="empty"):
        load_token(Settings(api_key_file=f))
    with pytest.raises(TokenError, match="cannot read"):
        load_token(Settings(api_key_file=tmp_path / "missing"))
    with pytest.raises(TokenError, match="printable ASCII"):
        load_token(Settings(api_key="two words"))
    with pytest.raises(ValidationError, match="not both"):
        Settings(api_key="a", api_key_file=f)


def test_protected_paths_and_checks() -> None:
    assert protects("/v2") and protects("/v2/models/demo/infer") and protects("/v2/repository/index")
    assert not protects("/v2/health/live") and not protects("/v2/health/ready") and not protects("/metrics")
    assert protects("/v2/health/live/") and protects("/v2/health/../models/x")
    auth = BearerAuth(b"abc")
    auth.check([(b"authorization", b"Bearer abc")])
    auth.check([(b"authorization", b"BEARER   abc ")])
    for bad in ([], [(b"authorization", b"Bearer abd")], [(b"authorization", b"Digest abc")]):
        with pytest.raises(Unauthorized):
            auth.check(bad)
