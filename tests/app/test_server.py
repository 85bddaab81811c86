"""The real server over real HTTP: protocol endpoints, exact answers from every client kind
(httpx JSON, tritonclient binary and JSON), batching under concurrency, streaming state."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.conftest import Reference, Server

TOL = 1e-5


def infer_json(server: Server, model: str, x: np.ndarray, lengths=None, outputs=("output",), **extra) -> httpx.Response:
    inputs = [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    if lengths is not None:
        inputs.append({"name": "sequence_lens", "datatype": "INT32", "shape": [len(lengths)], "data": list(map(int, lengths))})
    for name, arr in extra.items():
        inputs.append({"name": name, "datatype": "FP32", "shape": list(arr.shape), "data": arr.ravel().tolist()})
    doc = {"inputs": inputs}
    if outputs is not None:
        doc["outputs"] = [{"name": o} for o in outputs]
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=doc, timeout=30)


def tensor(resp: httpx.Response, name: str = "output") -> np.ndarray:
    assert resp.status_code == 200, resp.text
    for out in resp.json()["outputs"]:
        if out["name"] == name:
            return np.asarray(out["data"], np.float32).reshape(out["shape"])
    raise AssertionError(f"{name} not in response")


def test_health_and_server_metadata(server: Server) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{server.url}/v2").json()
    assert meta["name"] == "lstm-serve" and "binary_tensor_data" in meta["extensions"]
    for path in ("/v2/models/uni/ready", "/v2/models/uni/versions/1/ready"):
        assert httpx.get(server.url + path).json() == {"name": "uni", "ready": True}


@pytest.mark.parametrize("model", ["uni", "bi", "demo"])
def test_model_metadata_comes_from_the_artifact(server: Server, reference: Reference, model: str) -> None:
    spec = reference.spec(model)
    for path in (f"/v2/models/{model}", f"/v2/models/{model}/versions/1"):
        meta = httpx.get(server.url + path).json()
        assert meta["name"] == model and meta["platform"] == "onnxruntime_onnx"
        assert [i["name"] for i in meta["inputs"]] == list(spec.input_names)
        assert [o["name"] for o in meta["outputs"]] == list(spec.output_names)
        shapes = {i["name"]: i["shape"] for i in meta["inputs"]}
        assert shapes["input"] == [-1, -1, spec.input_size]
        assert {i["name"]: i["datatype"] for i in meta["inputs"]}["sequence_lens"] == "INT32"
        out = {o["name"]: o["shape"] for o in meta["outputs"]}["output"]
        assert out == ([-1, spec.output_size] if spec.task == "many_to_one" else [-1, -1, spec.output_size])
        assert meta["parameters"]["hidden_size"] == spec.hidden_size


def test_demo_prediction_over_plain_json(server: Server, reference: Reference) -> None:
    spec = reference.spec("demo")
    x = np.random.default_rng(3).standard_normal((2, 7, spec.input_size)).astype(np.float32)
    got = tensor(infer_json(server, "demo", x))
    want = np.stack([reference.run("demo", s)["output"][0] for s in x])
    np.testing.assert_allclose(got, want, atol=TOL)


def test_default_outputs_are_all_outputs_and_echo_the_id(server: Server, reference: Reference) -> None:
    x = np.ones((1, 4, 3), np.float32)
    resp = httpx.post(f"{server.url}/v2/models/uni/infer", json={
        "id": "abc", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4, 3], "data": x.ravel().tolist()}]})
    doc = resp.json()
    assert doc["id"] == "abc" and doc["model_name"] == "uni" and doc["model_version"] == "1"
    assert [o["name"] for o in doc["outputs"]] == ["output", "final_h", "final_c"]
    want = reference.run("uni", x[0])
    np.testing.assert_allclose(tensor(resp, "final_h"), want["final_h"], atol=TOL)
    assert resp.headers["x-request-id"] and "queue;dur=" in resp.headers["server-timing"]


def test_padded_rows_with_sequence_lens_equal_each_sequence_alone(server: Server, reference: Reference) -> None:
    rng = np.random.default_rng(4)
    lengths = np.array([9, 1, 5])
    x = rng.standard_normal((3, 9, 3)).astype(np.float32)
    x[1, 1:] = 1e3  # padding values must not leak into any answer
    x[2, 5:] = -7.0
    got_uni = tensor(infer_json(server, "uni", x, lengths))
    got_bi = tensor(infer_json(server, "bi", x, lengths))
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(got_uni[i], reference.run("uni", x[i, :n])["output"][0], atol=TOL)
        np.testing.assert_allclose(got_bi[i, :n], reference.run("bi", x[i, :n])["output"][0], atol=TOL)
        assert not got_bi[i, n:].any(), "many-to-many steps past a row's length must be zero"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", ["demo", "bi"])
def test_tritonclient_gets_exact_predictions(server: Server, reference: Reference, model: str, binary: bool) -> None:
    spec = reference.spec(model)
    client = triton.InferenceServerClient(url=server.hostport)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
    assert client.get_model_metadata(model)["name"] == model
    x = np.random.default_rng(5).standard_normal((3, 6, spec.input_size)).astype(np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput("output", binary_data=binary)]
    result = client.infer(model, [inp], outputs=outputs)
    want = np.stack([reference.run(model, s)["output"][0] for s in x])
    np.testing.assert_allclose(result.as_numpy("output"), want, atol=TOL)
    # and with the client's defaults (no outputs named: all of them, binary)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp])
    np.testing.assert_allclose(result.as_numpy("output"), want, atol=TOL)
    client.close()


def test_state_carried_across_chunks_equals_the_whole_sequence(server: Server, reference: Reference) -> None:
    x = np.random.default_rng(6).standard_normal((1, 12, 3)).astype(np.float32)
    first = infer_json(server, "uni", x[:, :5], outputs=("output", "final_h", "final_c"))
    h, c = tensor(first, "final_h"), tensor(first, "final_c")
    second = infer_json(server, "uni", x[:, 5:], initial_h=h, initial_c=c)
    np.testing.assert_allclose(tensor(second), reference.run("uni", x[0])["output"], atol=TOL)


def test_concurrent_clients_are_batched_and_every_answer_is_exact(server: Server, reference: Reference) -> None:
    rng = np.random.default_rng(7)
    jobs = []
    for i in range(192):
        model = "uni" if i % 2 else "bi"
        n = int(rng.integers(1, 4))
        t = int(rng.integers(1, 40))
        lengths = rng.integers(1, t + 1, size=n)
        lengths[0] = t
        jobs.append((model, rng.standard_normal((n, t, 3)).astype(np.float32), lengths))

    async def go() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=48)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
            sem = asyncio.Semaphore(48)

            async def one(model, x, lengths):
                async with sem:
                    return await client.post(f"/v2/models/{model}/infer", json={
                        "inputs": [
                            {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()},
                            {"name": "sequence_lens", "datatype": "INT32", "shape": [len(lengths)], "data": lengths.tolist()},
                        ], "outputs": [{"name": "output"}]})

            return await asyncio.gather(*(one(*j) for j in jobs))

    responses = asyncio.run(go())
    batch_sizes = [int(r.headers["x-batch-size"]) for r in responses if r.status_code == 200]
    assert len(batch_sizes) == len(jobs), [r.text for r in responses if r.status_code != 200][:3]
    assert max(batch_sizes) > 1, "no batch larger than one formed under 48 concurrent clients"
    worst = 0.0
    for (model, x, lengths), resp in zip(jobs, responses):
        got = tensor(resp)
        for i, n in enumerate(lengths):
            want = reference.run(model, x[i, :n])["output"][0]
            row = got[i] if model == "uni" else got[i, :n]
            worst = max(worst, float(np.abs(row - want).max()))
    assert worst <= TOL, f"batched answers differ from single-sequence answers by {worst}"
    metrics = server.metrics()
    assert 'lstm_serve_batch_size_bucket{le="1.0",model="uni",version="1"}' in metrics
