"""Per-request observability over real HTTP: Server-Timing, X-Request-ID, and the structured
JSON access log (one line per inference request) with its level taken from the settings."""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import Server, start_server

ACCESS = "lstm_serve.access"
VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
TIMING = re.compile(r"^([A-Za-z0-9_-]+);dur=([0-9]+(?:\.[0-9]+)?)$")


def body(x: np.ndarray, lengths: list[int] | None = None) -> dict:
    inputs = [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    if lengths is not None:
        inputs.append({"name": "sequence_lens", "datatype": "INT32", "shape": [len(lengths)], "data": lengths})
    return {"inputs": inputs}


def binary_request(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The binary tensor extension: JSON header, then the raw FP32 bytes."""
    raw = x.astype("<f4").tobytes()
    header = json.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}


def server_timing(resp: httpx.Response) -> dict[str, float]:
    header = resp.headers.get("server-timing")
    assert header, f"no Server-Timing on a {resp.status_code} inference response"
    timings = {}
    for part in header.split(","):
        m = TIMING.match(part.strip())
        assert m, f"malformed Server-Timing entry {part!r} in {header!r}"
        timings[m[1]] = float(m[2])
    return timings


def log_lines(server: Server) -> list[dict]:
    lines = [line for line in server.log().splitlines() if line.strip()]
    docs = []
    for line in lines:
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"server log line is not JSON: {line!r}")
        assert isinstance(doc, dict) and {"ts", "level", "logger", "msg"} <= doc.keys(), line
        docs.append(doc)
    return docs


def access_lines(server: Server, expect_ids: set[str] | None = None, timeout: float = 5.0) -> list[dict]:
    """The access lines, once those for ``expect_ids`` have been written (they follow the response)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [d for d in log_lines(server) if d["logger"] == ACCESS]
        if not expect_ids or expect_ids <= {d.get("request_id") for d in lines} or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.fixture(scope="module")
def obs_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(model_repo, tmp_path_factory.mktemp("obs-logs"), providers="cpu", log_level="info")
    yield srv
    srv.stop()


def test_generated_request_ids_and_access_timestamps() -> None:
    from app.logs import AccessLog
    from app.observe import request_id

    first, second = request_id(None), request_id(None)
    assert re.fullmatch(r"[0-9a-f]{32}", first) and re.fullmatch(r"[0-9a-f]{32}", second), (first, second)
    assert first[:16] == second[:16] and int(second[16:], 16) == int(first[16:], 16) + 1  # a process prefix, a count
    access = AccessLog(False)
    for now, ts in ((0.0, "1970-01-01T00:00:00.000Z"), (86_399.9996, "1970-01-01T23:59:59.999Z"),
                    (1_733_623_384.0625, "2024-12-08T02:03:04.062Z"), (1_733_623_385.5, "2024-12-08T02:03:05.500Z")):
        assert access._ts(now) == ts


def test_milliseconds_are_rounded_to_the_microsecond() -> None:
    from app.observe import milliseconds

    assert milliseconds(0.0001234567) == 0.123 and milliseconds(0.0001235) == 0.124 and milliseconds(1.5) == 1500.0
    assert milliseconds(0.0) == 0.0 and milliseconds(4e-7) == 0.0 and milliseconds(6e-7) == 0.001
    rng = np.random.default_rng(0)
    for seconds in np.concatenate([rng.uniform(0, 0.01, 500), rng.uniform(0, 100, 500)]).tolist():
        assert abs(milliseconds(seconds) - seconds * 1000) <= 0.0005 + 1e-9, seconds  # as ``round(ms, 3)``
        assert milliseconds(seconds) == round(milliseconds(seconds), 3)  # no more than 3 decimals


@pytest.mark.parametrize("encoding", ["json", "binary"])
def test_server_timing_splits_queue_and_inference(obs_server: Server, encoding: str) -> None:
    x = np.random.default_rng(1).standard_normal((2, 7, 3)).astype(np.float32)
    with httpx.Client(base_url=obs_server.url, timeout=30) as client:
        client.get("/v2/health/ready")  # connection open: the clock below times the request only
        for _ in range(5):
            if encoding == "json":
                start = time.perf_counter()
                resp = client.post("/v2/models/uni/infer", json=body(x))
            else:
                content, headers = binary_request(x)
                start = time.perf_counter()
                resp = client.post("/v2/models/uni/infer", content=content, headers=headers)
            elapsed_ms = (time.perf_counter() - start) * 1000
            assert resp.status_code == 200, resp.text
            timings = server_timing(resp)
            assert set(timings) == {"queue", "inference"}, timings
            assert all(math.isfinite(v) and v >= 0 for v in timings.values()), timings
            assert timings["inference"] > 0, "a batch ran in no time"
            assert timings["inference"] <= elapsed_ms, (timings, elapsed_ms)
            # queue then inference, both inside the request: together no longer than the round trip
            assert timings["queue"] + timings["inference"] <= elapsed_ms + 0.002, (timings, elapsed_ms)


def test_request_id_is_echoed_generated_or_replaced(obs_server: Server) -> None:
    x = np.ones((1, 3, 3), np.float32)
    with httpx.Client(base_url=obs_server.url, timeout=30) as client:

        def rid(path: str, request_id: str | None, method: str = "POST") -> str:
            headers = {} if request_id is None else {"X-Request-ID": request_id}
            if method == "POST":
                resp = client.post(path, json=body(x), headers=headers)
            else:
                resp = client.get(path, headers=headers)
            got = resp.headers.get("x-request-id")
            assert got and VALID_ID.match(got), f"{path}: bad X-Request-ID {got!r}"
            return got

        given = "client-1.trace:AB_c"
        assert rid("/v2/models/uni/infer", given) == given
        assert rid("/v2/models/nope/infer", given) == given  # errors too
        assert rid("/v2/health/ready", given, "GET") == given  # and every other endpoint
        longest = "a" * 128
        assert rid("/v2/models/uni/infer", longest) == longest

        generated = {rid("/v2/models/uni/infer", None) for _ in range(3)}
        assert len(generated) == 3, "generated ids must be unique"
        for bad in ("x" * 300, "a" * 129, "has spaces in it", "semi;colon", ""):
            got = rid("/v2/models/uni/infer", bad)
            assert got != bad, f"invalid X-Request-ID {bad[:40]!r} was echoed"
            assert len(got) <= 128


def test_access_log_has_one_json_line_per_inference_request(obs_server: Server) -> None:
    tag = uuid.uuid4().hex[:8]
    rng = np.random.default_rng(2)
    sent: dict[str, tuple[httpx.Response, float]] = {}
    with httpx.Client(base_url=obs_server.url, timeout=30) as client:

        def send(name: str, path: str, doc: dict | None = None, method: str = "POST", with_id: bool = True) -> str:
            headers = {"X-Request-ID": f"{tag}-{name}"} if with_id else {}
            start = time.perf_counter()
            if method == "POST":
                resp = client.post(path, json=doc, headers=headers)
            else:
                resp = client.get(path, headers=headers)
            elapsed_ms = (time.perf_counter() - start) * 1000
            rid = resp.headers["x-request-id"]
            sent[rid] = (resp, elapsed_ms)
            return rid

        ok = [
            send("ok1", "/v2/models/uni/infer", body(rng.standard_normal((1, 4, 3)).astype(np.float32))),
            send("ok2", "/v2/models/uni/infer", body(rng.standard_normal((2, 5, 3)).astype(np.float32), [5, 3])),
            send("ok3", "/v2/models/bi/versions/1/infer", body(rng.standard_normal((3, 6, 3)).astype(np.float32))),
            # no id from the client: the generated one is what the log line carries
            send("ok4", "/v2/models/uni/infer", body(np.ones((1, 2, 3), np.float32)), with_id=False),
        ]
        bad_input = send("bad", "/v2/models/uni/infer", body(np.zeros((1, 2, 4), np.float32)))
        unknown = send("unknown", "/v2/models/nope/infer", body(np.zeros((1, 2, 3), np.float32)))
        others = [
            send("live", "/v2/health/live", method="GET"),
            send("meta", "/v2/models/uni", method="GET"),
            send("metrics", "/metrics", method="GET"),
        ]
    infer_ids = {*ok, bad_input, unknown}
    assert ok[3] and not ok[3].startswith(tag)
    assert [sent[r][0].status_code for r in ok] == [200] * 4
    assert sent[bad_input][0].status_code == 400 and sent[unknown][0].status_code == 404

    lines = access_lines(obs_server, infer_ids)
    by_id: dict[str, list[dict]] = {}
    for line in lines:
        by_id.setdefault(line.get("request_id"), []).append(line)
    for rid in infer_ids:
        assert len(by_id.get(rid, [])) == 1, f"{len(by_id.get(rid, []))} access lines for request {rid}"
    for rid in others:
        assert rid not in by_id, f"a non-inference request ({rid}) got an access line"

    for rid in infer_ids:
        (line,) = by_id[rid]
        resp, elapsed_ms = sent[rid]
        assert line["level"] == "info" and line["code"] == resp.status_code
        assert isinstance(line["latency_ms"], (int, float)) and 0 < line["latency_ms"] <= elapsed_ms + 0.001, (
            line["latency_ms"], elapsed_ms)
        if resp.status_code == 200:
            # the same figures as the answer's Server-Timing (milliseconds to the microsecond)
            assert server_timing(resp) == {"queue": line["queue_ms"], "inference": line["inference_ms"]}, line
            assert line["model"] == resp.json()["model_name"]
            assert line["batch_size"] == int(resp.headers["x-batch-size"]) >= 1
            assert not line.get("error")
    assert by_id[ok[1]][0]["batch_size"] >= 2 and by_id[ok[2]][0]["batch_size"] >= 3

    (bad,) = by_id[bad_input]
    assert bad["code"] == 400 and bad["model"] == "uni" and bad.get("batch_size") is None
    assert isinstance(bad.get("error"), str) and "features" in bad["error"], bad
    assert bad["error"] == sent[bad_input][0].json()["error"]
    (missing,) = by_id[unknown]
    assert missing["code"] == 404 and missing["model"] == "", missing
    assert "nope" in missing.get("error", ""), missing


def test_log_level_comes_from_the_settings(model_repo: Path, tmp_path: Path) -> None:
    srv = start_server(model_repo, tmp_path, providers="cpu", log_level="warning")
    try:
        x = np.ones((1, 3, 3), np.float32)
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            for _ in range(3):
                assert client.post("/v2/models/uni/infer", json=body(x)).status_code == 200
            assert client.post("/v2/models/nope/infer", json=body(x)).status_code == 404
        time.sleep(0.5)  # the access line follows the response: give a wrong one time to appear
    finally:
        assert srv.stop() == 0
    lines = log_lines(srv)
    assert not [d for d in lines if d["logger"] == ACCESS], "access lines written at log_level=warning"
    below = [d for d in lines if d["level"] in ("debug", "info")]
    assert not below, f"lines below warning at log_level=warning: {below[:3]}"


def test_an_unexpected_error_is_a_500_that_still_carries_the_request_id() -> None:
    """A bug in a handler (simulated by a route that raises) answers 500 with the KServe error
    body and the request id, instead of a bare Starlette error page."""
    import asyncio

    from app.config import Settings
    from app.server import create_app

    app = create_app(Settings(model_repository="nowhere"))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/boom", headers={"X-Request-ID": "req-boom-1"})

    resp = asyncio.run(go())
    assert resp.status_code == 500
    assert resp.json() == {"error": "internal error: RuntimeError"}
    assert resp.headers["x-request-id"] == "req-boom-1"
