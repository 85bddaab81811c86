"""Live model lifecycle on a real server (one process and a shared engine behind two workers):
a new version copied in and loaded under 32 clients with no failed request, bad files refused
while the old version serves, ``poll`` mode, tritonclient's repository calls, per-model
settings, and the index after each step."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import Server, start_server

torch = pytest.importorskip("torch")

WORKERS = [pytest.param(1, id="workers=1"), pytest.param(2, id="workers=2")]
CLIENTS = 32
X = np.random.default_rng(5).standard_normal((2, 6, 3)).astype(np.float32)


@pytest.fixture(scope="session")
def versions_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model ``m`` in three versions with different weights (same architecture)."""
    from export.testing import make_model

    pool = tmp_path_factory.mktemp("pool")
    for v in (1, 2, 3):
        make_model(pool, "m", num_layers=1, hidden_size=8, input_size=3, output_size=2, seed=v, version=v)
    return pool


@pytest.fixture
def repo(versions_pool: Path, tmp_path: Path) -> Path:
    """A repository holding ``m`` version 1 only."""
    r = tmp_path / "repo"
    shutil.copytree(versions_pool / "m" / "1", r / "m" / "1")
    return r


def add_version(pool: Path, repo: Path, v: int, as_v: int | None = None) -> None:
    """Copy a version in the way an operator would: into a hidden directory, then rename."""
    tmp = repo / "m" / f".incoming-{v}"
    shutil.copytree(pool / "m" / str(v), tmp)
    tmp.rename(repo / "m" / str(as_v or v))


def write_settings(repo: Path, doc: dict) -> None:
    (repo / "m" / "settings.json").write_text(json.dumps(doc))


def expected(path: Path, x: np.ndarray = X) -> np.ndarray:
    """What ``path`` answers for ``x``, run directly in ONNX Runtime."""
    import onnxruntime as ort

    from app.contract import ModelSpec, feeds

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = ModelSpec.from_metadata(dict(sess.get_modelmeta().custom_metadata_map))
    return sess.run(["output"], feeds(spec, x))[0]


def body(x: np.ndarray = X) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
            "outputs": [{"name": "output"}]}


def infer(srv: Server, version: int | None = None) -> httpx.Response:
    path = "/v2/models/m" + (f"/versions/{version}" if version else "") + "/infer"
    return httpx.post(srv.url + path, json=body(), timeout=30)


def output(resp: httpx.Response) -> np.ndarray:
    out = resp.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def index(srv: Server) -> dict[tuple[str, str], tuple[str, str]]:
    resp = httpx.post(srv.url + "/v2/repository/index", timeout=30)
    assert resp.status_code == 200, resp.text
    return {(e["name"], e["version"]): (e["state"], e["reason"]) for e in resp.json()}


def states(srv: Server) -> dict[str, str]:
    return {v: s for (n, v), (s, _) in index(srv).items() if n == "m"}


def load(srv: Server, name: str = "m") -> httpx.Response:
    return httpx.post(f"{srv.url}/v2/repository/models/{name}/load", timeout=120)


@dataclass
class Load:
    """32 clients sending requests until stopped; every answer is recorded."""

    srv: Server
    paths: list[str]
    codes: Counter = field(default_factory=Counter)
    answers: list[tuple[float, str]] = field(default_factory=list)  # (sent at, model_version)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, i: int) -> None:
        path = self.paths[i % len(self.paths)]
        payload = json.dumps(body())
        with httpx.Client(base_url=self.srv.url, timeout=30) as c:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    r = c.post(path, content=payload, headers={"content-type": "application/json"})
                except httpx.HTTPError as exc:
                    self.failures.append(f"{path}: {exc!r}")
                    continue
                self.codes[r.status_code] += 1
                if r.status_code == 200:
                    self.answers.append((sent, r.json()["model_version"]))
                else:
                    self.failures.append(f"{path}: {r.status_code} {r.text}")

    @property
    def versions(self) -> list[str]:
        return [v for _, v in self.answers]

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in self.threads:
            t.start()
        deadline = time.monotonic() + 30
        while sum(self.codes.values()) < CLIENTS and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)  # keep the load on past the change
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.mark.parametrize("workers", WORKERS)
def test_new_version_under_load_swaps_with_no_failed_request(
    versions_pool: Path, repo: Path, tmp_path: Path, workers: int
) -> None:
    srv = start_server(repo, tmp_path / "logs", workers=workers, model_control_mode="explicit")
    try:
        v1, v2, v3 = (expected(versions_pool / "m" / str(v) / "model.onnx") for v in (1, 2, 3))
        assert np.abs(v1 - v2).max() > 1e-3 and np.abs(v2 - v3).max() > 1e-3  # distinguishable weights
        assert states(srv) == {"1": "READY"}

        # Default policy (latest 1): version 2 replaces version 1 while 32 clients send to it.
        with Load(srv, ["/v2/models/m/infer"]) as traffic:
            add_version(versions_pool, repo, 2)
            assert states(srv) == {"1": "READY", "2": "UNAVAILABLE"}  # on disk, not loaded yet
            started = time.monotonic()
            resp = load(srv)
            loaded_at = time.monotonic()
            swap_s = loaded_at - started
            assert resp.status_code == 200 and resp.json() == {}, resp.text
        assert traffic.failures == [], traffic.failures[:5]
        assert traffic.codes[200] > 2 * CLIENTS and set(traffic.versions) <= {"1", "2"}
        assert "1" in traffic.versions[:CLIENTS] and traffic.versions[-1] == "2"
        late = {v for t, v in traffic.answers if t > loaded_at}
        assert late == {"2"}, "a request sent after the load returned reached version 1"
        np.testing.assert_allclose(output(infer(srv)), v2, atol=1e-5)
        r1 = infer(srv, 1)
        assert r1.status_code == 404 and "no loaded version '1'" in r1.json()["error"]
        assert states(srv) == {"1": "UNAVAILABLE", "2": "READY"}
        assert "not selected by the version policy (latest 1)" in index(srv)[("m", "1")][1]
        metrics = srv.metrics()
        assert 'lstm_serve_sequences_total{model="m",version="2"}' in metrics
        assert 'version="1"' not in metrics, "version 1's series outlived its unload"
        print(f"\nworkers={workers}: swap 1->2 under {CLIENTS} clients: {dict(traffic.codes)}, load call {swap_s:.2f} s")

        # Latest 2: version 3 joins, version 2 stays addressable at its versioned path.
        write_settings(repo, {"version_policy": {"latest": {"num_versions": 2}}})
        with Load(srv, ["/v2/models/m/infer", "/v2/models/m/versions/2/infer"]) as traffic:
            add_version(versions_pool, repo, 3)
            assert load(srv).status_code == 200
        assert traffic.failures == [], traffic.failures[:5]
        np.testing.assert_allclose(output(infer(srv)), v3, atol=1e-5)
        r2 = infer(srv, 2)
        assert r2.json()["model_version"] == "2"
        np.testing.assert_allclose(output(r2), v2, atol=1e-5)
        assert states(srv) == {"1": "UNAVAILABLE", "2": "READY", "3": "READY"}
        assert httpx.get(srv.url + "/v2/models/m").json()["versions"] == ["2", "3"]

        # Unload: 200 once drained, then the model is gone and the index says why.
        resp = httpx.post(srv.url + "/v2/repository/models/m/unload", timeout=60)
        assert resp.status_code == 200 and resp.json() == {}
        assert infer(srv).status_code == 404
        assert index(srv)[("m", "3")] == ("UNAVAILABLE", "unloaded")
        assert 'model="m"' not in "\n".join(l for l in srv.metrics().splitlines() if "version=" in l)
        assert load(srv).status_code == 200
        np.testing.assert_allclose(output(infer(srv)), v3, atol=1e-5)
    finally:
        assert srv.stop() == 0


def _corrupt(path: Path, pool: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _truncated(path: Path, pool: Path) -> None:
    data = (pool / "m" / "2" / "model.onnx").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_contract(path: Path, pool: Path) -> None:
    """A valid ONNX graph whose metadata claims a bidirectional model it is not."""
    import onnx

    model = onnx.load(pool / "m" / "2" / "model.onnx")
    for prop in model.metadata_props:
        if prop.key == "bidirectional":
            prop.value = "true"
    onnx.save(model, path)


@pytest.mark.parametrize("workers", WORKERS)
def test_bad_files_are_refused_naming_the_version_and_the_old_one_serves(
    versions_pool: Path, repo: Path, tmp_path: Path, workers: int
) -> None:
    srv = start_server(repo, tmp_path / "logs", workers=workers, model_control_mode="explicit")
    try:
        v1 = expected(versions_pool / "m" / "1" / "model.onnx")
        for make, why in ((_corrupt, "Protobuf parsing failed"), (_truncated, ""), (_wrong_contract, "do not match the contract")):
            (repo / "m" / "2").mkdir()
            make(repo / "m" / "2" / "model.onnx", versions_pool)
            resp = load(srv)
            assert resp.status_code == 400, (make.__name__, resp.text)
            error = resp.json()["error"]
            assert "model 'm' version 2" in error and why in error, (make.__name__, error)
            assert "keeps serving version(s) [1]" in error
            ok = infer(srv)
            assert ok.status_code == 200 and ok.json()["model_version"] == "1"
            np.testing.assert_allclose(output(ok), v1, atol=1e-5)
            state, reason = index(srv)[("m", "2")]
            assert state == "UNAVAILABLE" and "model 'm' version 2" in reason, (make.__name__, reason)
            assert states(srv)["1"] == "READY"
            shutil.rmtree(repo / "m" / "2")

        # A settings file with a bad field: 400 naming the file and the field; nothing changes.
        write_settings(repo, {"version_policy": {"latest": {"num_versions": 0}}, "max_batch_size": 4})
        resp = load(srv)
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert "settings.json" in error and "version_policy.latest.num_versions" in error, error
        assert infer(srv).status_code == 200

        # Unknown model, bad name, unsupported parameter: clear 4xx, the server keeps serving.
        assert load(srv, "nothing").status_code == 404
        assert "not in the repository" in load(srv, "nothing").json()["error"]
        bad = httpx.post(srv.url + "/v2/repository/models/m/load", json={"parameters": {"config": "{}"}})
        assert bad.status_code == 400 and "config" in bad.json()["error"]
        assert httpx.post(srv.url + "/v2/repository/index", content=b"{nope").status_code == 400
        assert infer(srv).status_code == 200
    finally:
        assert srv.stop() == 0


def test_at_start_a_bad_newest_version_is_unavailable_and_the_newest_valid_one_serves(
    versions_pool: Path, repo: Path, tmp_path: Path
) -> None:
    add_version(versions_pool, repo, 2)
    (repo / "m" / "3").mkdir()
    _truncated(repo / "m" / "3" / "model.onnx", versions_pool)
    srv = start_server(repo, tmp_path / "logs")
    try:
        st = index(srv)
        assert st[("m", "2")] == ("READY", "")
        assert st[("m", "3")][0] == "UNAVAILABLE" and "model 'm' version 3" in st[("m", "3")][1]
        assert st[("m", "1")] == ("UNAVAILABLE", "not selected by the version policy (latest 1)")
        np.testing.assert_allclose(output(infer(srv)), expected(versions_pool / "m" / "2" / "model.onnx"), atol=1e-5)
        # model_control_mode=none (the default): load and unload are refused, naming the setting.
        for op in ("load", "unload"):
            resp = httpx.post(f"{srv.url}/v2/repository/models/m/{op}")
            assert resp.status_code == 403 and "model_control_mode" in resp.json()["error"]
        assert infer(srv).status_code == 200
    finally:
        srv.stop()


def _wait_for(what: str, check, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("workers", WORKERS)
def test_poll_mode_picks_up_a_new_version_and_a_removed_one(
    versions_pool: Path, repo: Path, tmp_path: Path, workers: int
) -> None:
    srv = start_server(repo, tmp_path / "logs", workers=workers, model_control_mode="poll", repository_poll_s=0.3)
    try:
        meta = lambda: httpx.get(srv.url + "/v2/models/m").json()
        assert meta()["versions"] == ["1"]
        add_version(versions_pool, repo, 2)
        _wait_for("version 2 to serve", lambda: meta()["versions"] == ["2"])
        np.testing.assert_allclose(output(infer(srv)), expected(versions_pool / "m" / "2" / "model.onnx"), atol=1e-5)
        # A bad file is reported, not served; the serving version stays.
        (repo / "m" / "3").mkdir()
        _corrupt(repo / "m" / "3" / "model.onnx", versions_pool)
        _wait_for("version 3 to be reported", lambda: states(srv).get("3") == "UNAVAILABLE")
        assert meta()["versions"] == ["2"] and infer(srv).json()["model_version"] == "2"
        shutil.rmtree(repo / "m" / "3")
        # Removing the newest version brings the one before it back (latest 1).
        shutil.rmtree(repo / "m" / "2")
        _wait_for("version 1 to come back", lambda: meta()["versions"] == ["1"])
        np.testing.assert_allclose(output(infer(srv)), expected(versions_pool / "m" / "1" / "model.onnx"), atol=1e-5)
        assert states(srv) == {"1": "READY"}
        # A new model appears and is served; its directory removed, it unloads.
        shutil.copytree(versions_pool / "m" / "3", repo / "n" / "1")
        _wait_for("model n", lambda: httpx.get(srv.url + "/v2/models/n").status_code == 200)
        shutil.rmtree(repo / "n")
        _wait_for("model n to unload", lambda: httpx.get(srv.url + "/v2/models/n").status_code == 404)
        # Unloaded through the API, a model stays unloaded across polls until loaded again.
        assert httpx.post(srv.url + "/v2/repository/models/m/unload", timeout=30).status_code == 200
        time.sleep(1.0)  # three polls
        assert infer(srv).status_code == 404 and states(srv) == {"1": "UNAVAILABLE"}
        assert load(srv).status_code == 200 and infer(srv).json()["model_version"] == "1"
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("workers", WORKERS)
def test_tritonclient_repository_calls(versions_pool: Path, repo: Path, tmp_path: Path, workers: int) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    srv = start_server(repo, tmp_path / "logs", workers=workers, model_control_mode="explicit")
    try:
        client = httpclient.InferenceServerClient(srv.hostport)
        assert client.get_model_repository_index() == [{"name": "m", "version": "1", "state": "READY", "reason": ""}]
        add_version(versions_pool, repo, 2)
        client.load_model("m")
        assert client.is_model_ready("m", "2") and not client.is_model_ready("m", "1")
        assert {(e["version"], e["state"]) for e in client.get_model_repository_index()} == {
            ("1", "UNAVAILABLE"), ("2", "READY")}
        client.unload_model("m")
        assert not client.is_model_ready("m")
        assert {(e["version"], e["state"]) for e in client.get_model_repository_index()} == {
            ("1", "UNAVAILABLE"), ("2", "UNAVAILABLE")}
        assert [e["reason"] for e in client.get_model_repository_index() if e["version"] == "2"] == ["unloaded"]
        with pytest.raises(InferenceServerException, match="not in the repository"):
            client.load_model("absent")
        client.load_model("m")
        assert client.is_model_ready("m", "2")
        assert "model_repository" in client.get_server_metadata()["extensions"]
    finally:
        assert srv.stop() == 0


def test_per_model_settings_policy_default_version_and_batching(
    versions_pool: Path, repo: Path, tmp_path: Path
) -> None:
    add_version(versions_pool, repo, 2)
    add_version(versions_pool, repo, 3)
    write_settings(repo, {"version_policy": {"specific": {"versions": [2, 3]}}, "default_version": 1,
                          "max_batch_size": 4, "max_queue_size": 8, "max_queue_delay_ms": 0.5})
    srv = start_server(repo, tmp_path / "logs", max_batch_size=32)
    try:
        assert httpx.get(srv.url + "/v2/models/m").json()["versions"] == ["1", "2", "3"]  # default always loads
        resp = infer(srv)
        assert resp.json()["model_version"] == "1"
        np.testing.assert_allclose(output(resp), expected(versions_pool / "m" / "1" / "model.onnx"), atol=1e-5)
        five = httpx.post(srv.url + "/v2/models/m/infer", json=body(np.zeros((5, 4, 3), np.float32)))
        assert five.status_code == 400 and "at most 4" in five.json()["error"]
        assert httpx.post(srv.url + "/v2/models/m/infer", json=body(np.zeros((4, 4, 3), np.float32))).status_code == 200
    finally:
        srv.stop()


def test_settings_file_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    from app.config import Settings
    from app.engine.model_settings import ModelSettingsError, read

    server = Settings(max_batch_size=8, max_queue_size=16)
    (tmp_path / "settings.json").write_text('{"version_policy": {"latest": {}, "all": {}}}')
    with pytest.raises(ModelSettingsError, match=r"settings.json: field 'version_policy': .*exactly one"):
        read(tmp_path, server)
    (tmp_path / "settings.json").write_text('{"max_queue_size": 4}')
    with pytest.raises(ModelSettingsError, match=r"field 'max_queue_size'.*must be >= max_batch_size \(8\)"):
        read(tmp_path, server)
    (tmp_path / "settings.json").write_text('{"max_batch_sise": 4}')
    with pytest.raises(ModelSettingsError, match="field 'max_batch_sise': Extra inputs are not permitted"):
        read(tmp_path, server)
    (tmp_path / "settings.json").write_text("{")
    with pytest.raises(ModelSettingsError, match="not readable JSON"):
        read(tmp_path, server)
    (tmp_path / "settings.json").write_text('{"max_queue_delay_ms": 0}')
    _, batching = read(tmp_path, server)
    assert (batching.max_batch_size, batching.max_queue_size, batching.max_queue_delay_ms) == (8, 16, 0.0)


@pytest.mark.parametrize("workers", WORKERS)
def test_unload_answers_once_the_queue_drained_and_every_queued_request_is_answered(
    repo: Path, tmp_path: Path, workers: int
) -> None:
    srv = start_server(repo, tmp_path / "logs", workers=workers, model_control_mode="explicit",
                       dispatch_when_idle="false", max_queue_delay_ms=4000, max_batch_size=64)
    try:
        pool = ThreadPoolExecutor(9)
        queued = [pool.submit(infer, srv) for _ in range(8)]
        _wait_for("8 queued sequences",
                  lambda: 'lstm_serve_queue_depth{model="m",version="1"} 16.0' in srv.metrics(), timeout=2.5)
        started = time.monotonic()
        unload = pool.submit(httpx.post, srv.url + "/v2/repository/models/m/unload", timeout=30)
        _wait_for("UNLOADING", lambda: states(srv) == {"1": "UNLOADING"}, timeout=1.0)
        assert unload.result().status_code == 200
        took = time.monotonic() - started
        assert [f.result().status_code for f in queued] == [200] * 8, [f.result().text for f in queued]
        assert took > 1.0, "unload answered before the queue (waiting 4 s for a batch) drained"
        assert index(srv)[("m", "1")] == ("UNAVAILABLE", "unloaded")
        assert infer(srv).status_code == 404
        print(f"\nworkers={workers}: unload with 8 requests queued answered after {took:.2f} s")
        pool.shutdown()
    finally:
        assert srv.stop() == 0


def test_version_policies_select_as_tritons_do() -> None:
    from app.engine.model_settings import ModelSettings

    def select(doc: dict, available: list[int]) -> list[int]:
        policy = ModelSettings.model_validate({"version_policy": doc}).version_policy
        assert policy is not None
        return policy.select(available)

    assert select({"latest": {"num_versions": 2}}, [3, 1, 7]) == [3, 7]
    assert select({"latest": {}}, [3, 1, 7]) == [7]
    assert select({"all": {}}, [3, 1, 7]) == [1, 3, 7]
    assert select({"specific": {"versions": [1, 9]}}, [3, 1, 7]) == [1]
    for bad in ({}, {"all": {"x": 1}}, {"specific": {"versions": []}}, {"newest": {}}):
        with pytest.raises(ValueError, match="version_policy"):
            ModelSettings.model_validate({"version_policy": bad})


@pytest.mark.parametrize("workers", WORKERS)
def test_a_models_own_queue_size_refuses_past_it(repo: Path, tmp_path: Path, workers: int) -> None:
    write_settings(repo, {"max_batch_size": 4, "max_queue_size": 4})
    srv = start_server(repo, tmp_path / "logs", workers=workers, dispatch_when_idle="false", max_queue_delay_ms=3000)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(infer, srv)  # 2 sequences wait for company (up to 3 s)
            _wait_for("2 queued sequences",
                      lambda: 'lstm_serve_queue_depth{model="m",version="1"} 2.0' in srv.metrics(), timeout=2.5)
            three = httpx.post(srv.url + "/v2/models/m/infer", json=body(np.zeros((3, 4, 3), np.float32)))
            assert three.status_code == 503 and "(2 of 4 sequences waiting)" in three.json()["error"], three.text
            assert first.result().status_code == 200
    finally:
        srv.stop()


@pytest.mark.parametrize("workers", WORKERS)
def test_a_name_with_a_leading_underscore_follows_the_one_name_rule(
    versions_pool: Path, repo: Path, tmp_path: Path, workers: int
) -> None:
    """``_x9`` is a valid name for the URL guard, so it is one for discovery and the load and
    unload calls too (one rule, ``app.v2.names``): discovered at start, loaded, unloaded, served."""
    shutil.copytree(versions_pool / "m" / "1", repo / "_x0" / "1")  # at start: discovered
    srv = start_server(repo, tmp_path / "logs", workers=workers, model_control_mode="explicit")
    try:
        assert index(srv)[("_x0", "1")] == ("READY", "")
        shutil.copytree(versions_pool / "m" / "2", repo / "_x9" / "1")  # at run time: loaded by the API
        resp = load(srv, "_x9")
        assert resp.status_code == 200, resp.text
        assert index(srv)[("_x9", "1")] == ("READY", "")
        answer = httpx.post(srv.url + "/v2/models/_x9/infer", json=body(), timeout=30)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(output(answer), expected(repo / "_x9" / "1" / "model.onnx"), atol=1e-5)
        resp = httpx.post(f"{srv.url}/v2/repository/models/_x9/unload", timeout=60)
        assert resp.status_code == 200, resp.text
        assert index(srv)[("_x9", "1")][0] == "UNAVAILABLE"
        bad = load(srv, ".x9")  # the rule still refuses what it refuses, naming it
        assert bad.status_code == 400 and "model names match" in bad.json()["error"]
    finally:
        assert srv.stop() == 0
