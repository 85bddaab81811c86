"""The flat inference entry (``app.http.entry``) keeps every guarantee of the layers it skips.

Inference requests are answered ahead of FastAPI's middleware stack (issue 22); every other
route still goes through it. For both kinds of request, in one process and with two HTTP
workers and an engine process, on a real server: the request id (echoed or generated), 401
without the token, 400 for a name that breaks the rule, 408 for a late body (connection closed),
gzip for a client that accepts it, and for inference Server-Timing, 413, one access line per
request with every field, and request counters equal to the traffic sent.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import Server, start_server
from tests.rawhttp import read_response, request_bytes

TOKEN = "entry-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY_TIMEOUT_S = 1.0
LIMIT = 16_384
ACCESS_FIELDS = {"ts", "level", "logger", "msg", "request_id", "model", "version", "code", "latency_ms",
                 "batch_size", "queue_ms", "inference_ms", "error", "pid"}
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def doc(n: int = 1, steps: int = 3) -> dict:
    x = np.random.default_rng(n).standard_normal((n, steps, 3)).astype(np.float32)
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


@pytest.fixture(scope="module", params=["1", "2"], ids=["one process", "two workers"])
def srv(request: pytest.FixtureRequest, model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(model_repo, tmp_path_factory.mktemp("logs"), workers=request.param, api_key=TOKEN,
                          body_timeout_s=BODY_TIMEOUT_S, max_request_bytes=LIMIT, gzip_min_bytes=64)
    yield server
    server.stop()


def counts(server: Server) -> dict[str, float]:
    """requests_total for model uni, by code (the sum over workers)."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        m = re.match(r'lstm_serve_requests_total\{(.*)\} (\S+)$', line)
        if m and 'model="uni"' in m[1] and 'protocol="http"' in m[1]:
            code = re.search(r'code="(\d+)"', m[1])[1]  # type: ignore[index]
            out[code] = out.get(code, 0.0) + float(m[2])
    return out


def late_body(server: Server, path: bytes) -> str:
    """Headers and a tenth of the declared body, then nothing: checks the 408; its request id."""
    head = request_bytes("POST", path, {"Content-Type": "application/json", "Content-Length": "100", **AUTH})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + b'{"inputs":')
        resp = read_response(sock, timeout=BODY_TIMEOUT_S + 5, check_close=True)
    assert resp.status == 408 and resp.closed, resp
    assert "body_timeout_s=1" in json.loads(resp.body)["error"]
    return resp.headers["x-request-id"]


def test_inference_keeps_every_guarantee(srv: Server) -> None:
    before = counts(srv)
    sent: dict[str, int] = {}
    ids: dict[str, int] = {}
    with httpx.Client(base_url=srv.url, timeout=30, headers={"Accept-Encoding": "identity"}) as client:  # httpx asks for gzip by default

        def infer(body: object, code: int, headers: dict[str, str] | None = None, raw: bytes | None = None) -> httpx.Response:
            content = raw if raw is not None else json.dumps(body).encode()
            resp = client.post("/v2/models/uni/infer", content=content, headers={**AUTH, **(headers or {})})
            assert resp.status_code == code, resp.text
            sent[str(code)] = sent.get(str(code), 0) + 1
            ids[resp.headers["x-request-id"]] = code
            return resp

        ok = infer(doc(), 200, {"X-Request-ID": "entry-1"})
        assert ok.headers["x-request-id"] == "entry-1"
        assert "queue;dur=" in ok.headers["server-timing"] and "inference;dur=" in ok.headers["server-timing"]
        assert ok.headers["content-type"] == "application/json" and "content-encoding" not in ok.headers
        assert ok.json()["outputs"][0]["shape"] == [1, 2]
        generated = {infer(doc(), 200).headers["x-request-id"] for _ in range(3)}
        assert len(generated) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", g) for g in generated)

        zipped = infer(doc(4), 200, {"Accept-Encoding": "gzip"})  # httpx inflates it
        assert zipped.headers["content-encoding"] == "gzip" and "Accept-Encoding" in zipped.headers["vary"]
        assert zipped.json()["outputs"][0]["shape"] == [4, 2]
        with client.stream("POST", "/v2/models/uni/infer", json=doc(4), headers={**AUTH, "Accept-Encoding": "gzip"}) as r:
            wire = b"".join(r.iter_raw())  # as sent: Content-Length counts the compressed bytes
            sent["200"] += 1
            ids[r.headers["x-request-id"]] = 200
        assert int(r.headers["content-length"]) == len(wire)
        assert json.loads(gzip.decompress(wire))["outputs"][0]["shape"] == [4, 2]

        missing = client.post("/v2/models/uni/infer", json=doc())
        assert missing.status_code == 401 and "www-authenticate" in missing.headers
        assert re.fullmatch(r"[0-9a-f]{32}", missing.headers["x-request-id"])
        sent["401"] = sent.get("401", 0) + 1
        ids[missing.headers["x-request-id"]] = 401
        assert "exceeds the limit" in infer(None, 413, raw=b"[" + b"0," * LIMIT + b"0]").json()["error"]
        assert "queue" not in infer({"inputs": []}, 400).headers.get("server-timing", "")

    bad_name = httpx.post(f"{srv.url}/v2/models/a%2fb/infer", json=doc(), headers=AUTH, timeout=10)
    assert bad_name.status_code == 400 and bad_name.headers["x-request-id"]
    ids[late_body(srv, b"/v2/models/uni/infer")] = 408
    sent["408"] = 1

    deadline = time.monotonic() + 10
    while True:  # the access lines of the last requests may still be on their way
        lines = {d["request_id"]: d for d in srv.log_lines() if d.get("logger") == "lstm_serve.access"}
        if set(ids) <= set(lines) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for rid, code in ids.items():
        line = lines[rid]
        assert set(line) == ACCESS_FIELDS, sorted(line)
        assert line["code"] == code and TS.match(line["ts"]) and line["latency_ms"] > 0
        assert line["model"] == ("" if code == 401 else "uni")  # the token is checked before the model
        if code == 200:
            assert line["batch_size"] >= 1 and line["queue_ms"] >= 0 and line["inference_ms"] > 0 and line["error"] is None
        else:
            assert line["error"] and line["batch_size"] is None
    after = counts(srv)
    gained = {c: after[c] - before.get(c, 0.0) for c in after if after[c] != before.get(c, 0.0)}
    del sent["401"]  # counted under model="" (no model looked up before the token)
    assert gained == {c: float(n) for c, n in sent.items()}, (gained, sent)


def test_other_routes_keep_every_guarantee(srv: Server) -> None:
    with httpx.Client(base_url=srv.url, timeout=30, headers={"Accept-Encoding": "identity"}) as client:  # httpx asks for gzip by default
        meta = client.get("/v2/models/uni", headers={**AUTH, "X-Request-ID": "meta-1", "Accept-Encoding": "gzip"})
        assert meta.status_code == 200 and meta.headers["x-request-id"] == "meta-1"
        assert meta.headers["content-encoding"] == "gzip" and meta.json()["name"] == "uni"
        plain = client.get("/v2/models/uni", headers=AUTH)
        assert "content-encoding" not in plain.headers and re.fullmatch(r"[0-9a-f]{32}", plain.headers["x-request-id"])
        denied = client.get("/v2/models/uni")
        assert denied.status_code == 401 and denied.headers["x-request-id"]
        assert client.get("/v2/models/a%2fb", headers=AUTH).status_code == 400
        assert client.get("/v2/health/ready").status_code == 200  # probes stay open
        index = client.post("/v2/repository/index", headers=AUTH)
        assert index.status_code == 200 and index.headers["x-request-id"]
    late_body(srv, b"/v2/repository/index")
