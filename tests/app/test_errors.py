"""Every bad request gets its status and a message naming the problem, and the server keeps
serving: each case is followed by a valid request that must succeed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import orjson
import pytest

from tests.conftest import Server, start_server

X = np.ones((1, 4, 3), np.float32)


def valid(server: Server, model: str = "uni", n: int = 1) -> httpx.Response:
    x = np.ones((n, 4, 3), np.float32)
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json={
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
        "outputs": [{"name": "output"}]}, timeout=30)


def post(server: Server, path: str, content: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(server.url + path, content=content, headers=headers or {}, timeout=30)


def doc(*inputs: dict) -> bytes:
    return orjson.dumps({"inputs": list(inputs)})


def inp(shape, data, name="input", datatype="FP32"):
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def binary_nan() -> tuple[bytes, dict]:
    x = np.ones((1, 4, 3), np.float32)
    x[0, 2, 1] = np.nan
    header = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4, 3],
                                        "parameters": {"binary_data_size": x.nbytes}}]})
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


CASES = [
    ("unknown model", "/v2/models/nope/infer", doc(inp([1, 4, 3], X.ravel().tolist())), {}, 404, "unknown model 'nope'"),
    ("unknown version", "/v2/models/uni/versions/9/infer", doc(inp([1, 4, 3], X.ravel().tolist())), {}, 404, "no loaded version '9'"),
    ("malformed JSON", "/v2/models/uni/infer", b'{"inputs": [', {}, 400, "malformed JSON"),
    ("wrong input name", "/v2/models/uni/infer", doc(inp([1, 4, 3], X.ravel().tolist(), name="x")), {}, 400, "unknown input 'x'"),
    ("wrong datatype", "/v2/models/uni/infer", doc(inp([1, 4, 3], X.ravel().tolist(), datatype="INT64")), {}, 400, "datatype 'INT64'"),
    ("wrong rank", "/v2/models/uni/infer", doc(inp([4, 3], X.ravel().tolist())), {}, 400, "must have shape [n, time, 3]"),
    ("wrong features", "/v2/models/uni/infer", doc(inp([1, 3, 4], X.ravel().tolist())), {}, 400, "4 features per step; the model expects 3"),
    ("data length mismatch", "/v2/models/uni/infer", doc(inp([1, 4, 3], [1.0] * 11)), {}, 400, "has 11 elements"),
    ("NaN in binary data", "/v2/models/uni/infer", *binary_nan(), 400, "NaN or infinite"),
    ("empty", "/v2/models/uni/infer", doc(inp([0, 4, 3], [])), {}, 400, "is empty"),
    ("empty body", "/v2/models/uni/infer", b"", {}, 400, "body is empty"),
    ("no inputs", "/v2/models/uni/infer", b'{"inputs": []}', {}, 400, "non-empty 'inputs'"),
    ("bad length", "/v2/models/uni/infer", doc(inp([1, 4, 3], X.ravel().tolist()), inp([1], [5], "sequence_lens", "INT32")), {}, 400, "between 1 and the time length 4"),
    ("unknown output", "/v2/models/uni/infer", orjson.dumps({"inputs": [inp([1, 4, 3], X.ravel().tolist())], "outputs": [{"name": "y"}]}), {}, 400, "unknown output 'y'"),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_is_refused_clearly_and_the_server_keeps_serving(
    server: Server, path: str, body: bytes, headers: dict, status: int, message: str
) -> None:
    resp = post(server, path, body, headers)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]
    assert valid(server).status_code == 200


def test_unknown_model_metadata_is_404_and_counted_without_its_name(server: Server) -> None:
    assert httpx.get(f"{server.url}/v2/models/nope").status_code == 404
    assert httpx.get(f"{server.url}/v2/models/nope/ready").status_code == 404
    post(server, "/v2/models/made-up-name/infer", b"{}")
    metrics = server.metrics()
    assert "made-up-name" not in metrics
    assert 'lstm_serve_requests_total{code="404",model="",protocol="http"}' in metrics


def _faulty_copy(src: Path, dst: Path) -> None:
    """A contract-valid model whose graph fails in ONNX Runtime for an odd number of rows
    (a Reshape to [4, -1] of its [n, 2] output), so an ONNX Runtime failure can be caused on purpose."""
    m = onnx.load(str(src))
    for node in m.graph.node:
        node.output[:] = ["output_raw" if o == "output" else o for o in node.output]
    m.graph.initializer.extend([
        onnx.numpy_helper.from_array(np.array([4, -1], np.int64), "pairs"),
        onnx.numpy_helper.from_array(np.array([-1, 2], np.int64), "back"),
    ])
    m.graph.node.extend([
        onnx.helper.make_node("Reshape", ["output_raw", "pairs"], ["paired"]),
        onnx.helper.make_node("Reshape", ["paired", "back"], ["output"]),
    ])
    dst.parent.mkdir(parents=True)
    onnx.save(m, str(dst))


@pytest.fixture(scope="module")
def strict(model_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server with small limits: requests wait for a full batch of two."""
    repo = tmp_path_factory.mktemp("strict")
    (repo / "uni").symlink_to(model_repo / "uni")
    srv = start_server(
        repo, tmp_path_factory.mktemp("strict-logs"),
        max_batch_size=2, max_queue_size=2, dispatch_when_idle="false", max_queue_delay_ms=5000,
        request_timeout_s=1.5, max_request_bytes=4096, max_sequence_length=50, warmup="false",
    )
    yield srv
    srv.stop()


def test_limits_too_long_and_too_big(strict: Server) -> None:
    long = np.ones((1, 51, 3), np.float32)
    resp = post(strict, "/v2/models/uni/infer", doc(inp([1, 51, 3], long.ravel().tolist())))
    assert resp.status_code == 400 and "at most 50" in resp.json()["error"]
    big = b'{"inputs": [' + b" " * 5000 + b"]}"
    resp = post(strict, "/v2/models/uni/infer", big)
    assert resp.status_code == 413 and "exceeds the limit of 4096 bytes" in resp.json()["error"]
    assert valid(strict, n=2).status_code == 200


def test_full_queue_is_503_with_retry_after_and_a_late_request_is_504(strict: Server) -> None:
    waiting: list[httpx.Response] = []
    t = threading.Thread(target=lambda: waiting.append(valid(strict, n=1)))
    t.start()  # one row waits (5 s delay, no dispatch when idle) for a second row
    deadline = time.monotonic() + 5
    while 'lstm_serve_queue_depth{model="uni",version="1"} 1.0' not in strict.metrics():
        assert time.monotonic() < deadline, "request never queued"
        time.sleep(0.02)
    refused = valid(strict, n=2)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1" and "queue is full" in refused.json()["error"]
    t.join()
    assert waiting[0].status_code == 504
    assert "not answered within request_timeout_s=1.5" in waiting[0].json()["error"]
    assert valid(strict, n=2).status_code == 200  # a full batch goes at once


def test_onnx_runtime_failure_fails_only_that_batch(model_repo: Path, tmp_path: Path) -> None:
    _faulty_copy(model_repo / "uni" / "1" / "model.onnx", tmp_path / "repo" / "faulty" / "1" / "model.onnx")
    srv = start_server(tmp_path / "repo", tmp_path, warmup="false")  # warm-up would hit batch 1
    try:
        bad = valid(srv, model="faulty", n=1)  # odd rows -> Reshape fails inside the graph
        assert bad.status_code == 500 and "inference failed on model 'faulty:1'" in bad.json()["error"]
        good = valid(srv, model="faulty", n=2)
        assert good.status_code == 200, good.text
        assert 'lstm_serve_requests_total{code="500",model="faulty",protocol="http"} 1.0' in srv.metrics()
    finally:
        srv.stop()
