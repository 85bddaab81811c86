"""Server-kept streaming: a sequence sent in chunks (sequence_id / sequence_start /
sequence_end), its LSTM state kept by the server, batched with other sequences, in order;
with one process and with two HTTP workers and an engine process."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.conftest import Reference, Server, start_server

TOL = 1e-5
FEATURES = 3


@pytest.fixture(scope="module")
def repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``uni`` (many-to-one), ``bi`` (bidirectional) and ``seq``: unidirectional many-to-many."""
    from export.testing import make_model

    root = tmp_path_factory.mktemp("streams")
    for name in ("uni", "bi"):
        shutil.copytree(model_repo / name, root / name)
    make_model(root, "seq", num_layers=2, hidden_size=12, input_size=FEATURES, output_size=2,
               bidirectional=False, task="many_to_many", seed=5)
    return root


@pytest.fixture(scope="module")
def ref(repo: Path) -> Reference:
    return Reference(repo)


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def srv(request: pytest.FixtureRequest, repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(repo, tmp_path_factory.mktemp("logs"), workers=request.param)
    yield server
    server.stop()


def chunk_body(x: np.ndarray, seq_id: object = None, start: bool = False, end: bool = False,
               outputs: tuple[str, ...] = ("output",), **state: np.ndarray) -> dict:
    inputs = [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    for name, arr in state.items():
        inputs.append({"name": name, "datatype": "FP32", "shape": list(arr.shape), "data": arr.ravel().tolist()})
    doc: dict = {"inputs": inputs, "outputs": [{"name": o} for o in outputs]}
    if seq_id is not None:
        doc["parameters"] = {"sequence_id": seq_id, "sequence_start": start, "sequence_end": end}
    return doc


def out(resp: httpx.Response, name: str = "output") -> np.ndarray:
    assert resp.status_code == 200, resp.text
    for o in resp.json()["outputs"]:
        if o["name"] == name:
            return np.asarray(o["data"], np.float32).reshape(o["shape"])
    raise AssertionError(name)


def cuts(rng: np.random.Generator, total: int, k: int) -> list[tuple[int, int]]:
    points = sorted(rng.choice(np.arange(1, total), size=k - 1, replace=False).tolist()) if k > 1 else []
    edges = [0, *points, total]
    return list(zip(edges[:-1], edges[1:]))


def expected(ref: Reference, model: str, x: np.ndarray, a: int, b: int) -> np.ndarray:
    """What chunk [a, b) must answer: many-to-one, the whole prefix's output; many-to-many, the
    whole sequence's outputs at those steps."""
    if ref.spec(model).task == "many_to_one":
        return ref.run(model, x[:b])["output"][0]
    return ref.run(model, x)["output"][0, a:b]


@pytest.mark.parametrize("model", ["uni", "seq"])
def test_chunked_sequences_equal_the_whole_sequence(srv: Server, ref: Reference, model: str) -> None:
    rng = np.random.default_rng(21)
    url = f"{srv.url}/v2/models/{model}/infer"
    worst = {"server-kept": 0.0, "client-carried": 0.0}
    with httpx.Client(timeout=30) as client:
        for k in range(1, 9):
            x = rng.standard_normal((int(rng.integers(k + 1, 40)), FEATURES)).astype(np.float32)
            parts = cuts(rng, len(x), k)
            seq_id = f"{model}-{k}-{srv.port}"
            h = c = None
            for i, (a, b) in enumerate(parts):
                want = expected(ref, model, x, a, b)
                kept = client.post(url, json=chunk_body(x[None, a:b], seq_id, start=i == 0, end=i == len(parts) - 1))
                worst["server-kept"] = max(worst["server-kept"], float(np.abs(out(kept)[0] - want).max()))
                state = {} if h is None else {"initial_h": h, "initial_c": c}
                carried = client.post(url, json=chunk_body(x[None, a:b], outputs=("output", "final_h", "final_c"), **state))
                worst["client-carried"] = max(worst["client-carried"], float(np.abs(out(carried)[0] - want).max()))
                h, c = out(carried, "final_h"), out(carried, "final_c")
    assert max(worst.values()) <= TOL, worst


def test_interleaved_streams_are_exact_and_batched_together(srv: Server, ref: Reference) -> None:
    rng = np.random.default_rng(22)
    streams = [rng.standard_normal((24, FEATURES)).astype(np.float32) for _ in range(32)]

    async def one(client: httpx.AsyncClient, i: int, x: np.ndarray) -> list[tuple[np.ndarray, int]]:
        got = []
        for j, (a, b) in enumerate([(0, 6), (6, 12), (12, 18), (18, 24)]):
            r = await client.post("/v2/models/uni/infer", json=chunk_body(x[None, a:b], i + 1000, j == 0, j == 3))
            got.append((out(r)[0], int(r.headers["x-batch-size"])))
        return got

    async def go() -> list:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30, limits=httpx.Limits(max_connections=32)) as client:
            return await asyncio.gather(*(one(client, i, x) for i, x in enumerate(streams)))

    results = asyncio.run(go())
    worst = max(float(np.abs(got - ref.run("uni", x[:b])["output"][0]).max())
                for x, res in zip(streams, results) for (got, _), b in zip(res, (6, 12, 18, 24)))
    assert worst <= TOL
    assert max(size for res in results for _, size in res) > 1, "no batch held chunks of several streams"
    assert 'lstm_serve_live_sequences{model="uni"} 0.0' in srv.metrics()


def test_chunks_sent_without_waiting_run_in_order_and_a_restart_starts_from_zero(srv: Server, ref: Reference) -> None:
    rng = np.random.default_rng(23)
    x = rng.standard_normal((30, FEATURES)).astype(np.float32)
    parts = [(0, 5), (5, 10), (10, 15), (15, 20), (20, 25)]
    fresh = rng.standard_normal((4, FEATURES)).astype(np.float32)
    seq_id = f"order-{srv.port}"

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30, limits=httpx.Limits(max_connections=16)) as client:
            tasks = []
            for i, (a, b) in enumerate(parts):  # each on its own connection, none waits for the last
                tasks.append(asyncio.create_task(client.post("/v2/models/uni/infer", json=chunk_body(x[None, a:b], seq_id, i == 0))))
                await asyncio.sleep(0.01)  # arrival order = sending order
            tasks.append(asyncio.create_task(client.post("/v2/models/uni/infer", json=chunk_body(fresh[None], seq_id, True, True))))
            return await asyncio.gather(*tasks)

    responses = asyncio.run(go())
    for (a, b), r in zip(parts, responses):
        np.testing.assert_allclose(out(r)[0], ref.run("uni", x[:b])["output"][0], atol=TOL)
    np.testing.assert_allclose(out(responses[-1])[0], ref.run("uni", fresh)["output"][0], atol=TOL)


def test_unknown_ended_and_typed_ids(srv: Server) -> None:
    url = f"{srv.url}/v2/models/uni/infer"
    x = np.ones((1, 3, FEATURES), np.float32)
    never = httpx.post(url, json=chunk_body(x, "never-started-7"))
    assert never.status_code == 404 and '"never-started-7"' in never.json()["error"]
    n = srv.port * 10 + 5
    assert httpx.post(url, json=chunk_body(x, n, start=True)).status_code == 200
    as_string = httpx.post(url, json=chunk_body(x, str(n)))  # "5" is not 5
    assert as_string.status_code == 404 and f'"{n}"' in as_string.json()["error"]
    assert httpx.post(url, json=chunk_body(x, n, end=True)).status_code == 200
    after = httpx.post(url, json=chunk_body(x, n))
    assert after.status_code == 409 and str(n) in after.json()["error"] and "ended" in after.json()["error"]
    assert httpx.post(url, json=chunk_body(x, n, start=True, end=True)).status_code == 200  # a new start is fine


@pytest.mark.parametrize(
    "doc_change, message",
    [
        (lambda d: d["parameters"].update(sequence_start="yes"), "sequence_start must be a JSON boolean"),
        (lambda d: d["parameters"].update(sequence_id=1.5), "sequence_id must be a string or an integer"),
        (lambda d: d["parameters"].update(sequence_id=0), "need a non-zero sequence_id"),
        (lambda d: d["inputs"][0].update(shape=[2, 3, FEATURES], data=[0.0] * 6 * FEATURES), "exactly one sequence"),
        (lambda d: d["inputs"].extend([
            {"name": n, "datatype": "FP32", "shape": [2, 1, 16], "data": [0.0] * 32} for n in ("initial_h", "initial_c")]),
         "the server keeps the state"),
    ],
)
def test_bad_sequence_requests_are_refused_naming_the_problem(srv: Server, doc_change, message: str) -> None:
    doc = chunk_body(np.ones((1, 3, FEATURES), np.float32), "bad", start=True)
    doc_change(doc)
    r = httpx.post(f"{srv.url}/v2/models/uni/infer", json=doc)
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_bidirectional_models_refuse_every_kind_of_state(srv: Server) -> None:
    x = np.ones((1, 3, FEATURES), np.float32)
    url = f"{srv.url}/v2/models/bi/infer"
    for doc in (
        chunk_body(x, "b", start=True),
        chunk_body(x, initial_h=np.zeros((4, 1, 8), np.float32), initial_c=np.zeros((4, 1, 8), np.float32)),
        chunk_body(x, outputs=("output", "final_h")),
    ):
        r = httpx.post(url, json=doc)
        assert r.status_code == 400 and "bidirectional" in r.json()["error"], r.text


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_sequences_work_unmodified(srv: Server, ref: Reference, binary: bool) -> None:
    client = triton.InferenceServerClient(srv.hostport)
    x = np.random.default_rng(24).standard_normal((12, FEATURES)).astype(np.float32)
    for i, (a, b) in enumerate([(0, 4), (4, 9), (9, 12)]):
        inp = triton.InferInput("input", [1, b - a, FEATURES], "FP32")
        inp.set_data_from_numpy(x[None, a:b], binary_data=binary)
        res = client.infer("uni", [inp], outputs=[triton.InferRequestedOutput("output", binary_data=binary)],
                           sequence_id=7000 + int(binary), sequence_start=i == 0, sequence_end=i == 2)
        np.testing.assert_allclose(res.as_numpy("output")[0], ref.run("uni", x[:b])["output"][0], atol=TOL)


def test_idle_sequences_are_evicted_and_the_limit_refuses_new_ones(repo: Path, tmp_path: Path) -> None:
    server = start_server(repo, tmp_path, sequence_idle_timeout_s=2, max_live_sequences=2)
    try:
        url = f"{server.url}/v2/models/uni/infer"
        x = np.ones((1, 3, FEATURES), np.float32)
        assert httpx.post(url, json=chunk_body(x, "a", start=True)).status_code == 200
        assert httpx.post(url, json=chunk_body(x, "b", start=True)).status_code == 200
        ended = time.monotonic()
        full = httpx.post(url, json=chunk_body(x, "c", start=True))
        assert full.status_code == 503 and "retry-after" in full.headers and '"c"' in full.json()["error"]
        assert 'lstm_serve_live_sequences{model="uni"} 2.0' in server.metrics()
        while 'lstm_serve_live_sequences{model="uni"} 0.0' not in server.metrics():
            assert time.monotonic() - ended < 2 + 5, "idle sequences not evicted within 5 s of the timeout"
            time.sleep(0.05)
        assert time.monotonic() - ended >= 2.0 - 0.1, "evicted before the idle timeout"
        gone = httpx.post(url, json=chunk_body(x, "a"))
        assert gone.status_code == 409 and '"a"' in gone.json()["error"] and "evicted" in gone.json()["error"]
        assert 'lstm_serve_sequences_evicted_total{model="uni"} 2.0' in server.metrics()
        assert httpx.post(url, json=chunk_body(x, "c", start=True)).status_code == 200
    finally:
        server.stop()


def test_a_sequence_with_a_chunk_waiting_is_never_evicted(repo: Path, tmp_path: Path) -> None:
    # Each chunk waits 1.5 s in the queue, longer than the 0.5 s idle timeout.
    server = start_server(repo, tmp_path, sequence_idle_timeout_s=0.5, dispatch_when_idle="false",
                          max_queue_delay_ms=1500)
    try:
        url = f"{server.url}/v2/models/uni/infer"
        x = np.ones((1, 3, FEATURES), np.float32)
        for i in range(3):
            r = httpx.post(url, json=chunk_body(x, "slow", start=i == 0), timeout=30)
            assert r.status_code == 200, r.text
        assert 'lstm_serve_sequences_evicted_total{model="uni"} 0.0' in server.metrics()
    finally:
        server.stop()


def test_model_metadata_says_the_model_keeps_state(srv: Server) -> None:
    uni = httpx.get(f"{srv.url}/v2/models/uni").json()["parameters"]
    bi = httpx.get(f"{srv.url}/v2/models/bi").json()["parameters"]
    assert uni["stateful"] is True and uni["sequence_batching"]["parameters"] == ["sequence_id", "sequence_start", "sequence_end"]
    assert bi["stateful"] is False and "sequence_batching" not in bi


def test_per_worker_engines_refuse_server_kept_state(repo: Path, tmp_path: Path) -> None:
    server = start_server(repo, tmp_path, workers=2, engine="per_worker")
    try:
        r = httpx.post(f"{server.url}/v2/models/uni/infer", json=chunk_body(np.ones((1, 3, FEATURES), np.float32), 1, True))
        assert r.status_code == 400 and "engine=shared" in r.json()["error"], r.text
    finally:
        server.stop()
