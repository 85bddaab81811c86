"""Slow, stalled and surplus connections against a real server (issue 15, item 1): idle and
half-sent requests are closed in time, the connection cap answers 503 in JSON, and hundreds of
stalled uploads do not slow a well-behaved client."""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, start_server
from tests.rawhttp import read_response, request_bytes

STALLED = 500
BODY_TIMEOUT_S = 4.0
IDLE_S = 1.0
MAX_CONNECTIONS = 600


@pytest.fixture(scope="module")
def guarded(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        model_repo, tmp_path_factory.mktemp("logs"), body_timeout_s=BODY_TIMEOUT_S,
        keep_alive_timeout_s=IDLE_S, max_connections=MAX_CONNECTIONS, access_log=False,
    )
    yield srv
    srv.stop()


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (reading and dropping any answer), or None."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def test_a_connection_that_never_sends_is_closed_after_the_idle_timeout(guarded: Server) -> None:
    with connect(guarded) as sock:
        took = closed_within(sock, IDLE_S + 3)
    assert took is not None and IDLE_S - 0.2 <= took <= IDLE_S + 1.5, took


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(guarded: Server) -> None:
    with connect(guarded) as sock:
        sock.sendall(request_bytes("GET", b"/v2/health/live"))
        assert read_response(sock).status == 200
        took = closed_within(sock, IDLE_S + 3)
    assert took is not None and took <= IDLE_S + 1.5, took


def test_a_connection_in_use_stays_open_and_closes_once_idle_for_the_timeout(guarded: Server) -> None:
    """The idle clock (``connections``): requests 0.6 idle periods apart keep a connection open
    past three idle periods, a body still arriving after more than one is no idleness, and the
    connection closes one idle period after its last answer."""
    with connect(guarded) as sock:
        for _ in range(5):
            sock.sendall(request_bytes("GET", b"/v2/health/live"))
            assert read_response(sock).status == 200
            time.sleep(IDLE_S * 0.6)
        doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 5, 4], "data": [0.5] * 20}]}
        body = json.dumps(doc).encode()
        sock.sendall(request_bytes("POST", b"/v2/models/demo/infer", {"Content-Type": "application/json",
                                                                      "Content-Length": str(len(body))}) + body[:10])
        time.sleep(IDLE_S * 1.5)
        sock.sendall(body[10:])
        assert read_response(sock).status == 200
        took = closed_within(sock, IDLE_S + 3)
    assert took is not None and IDLE_S - 0.2 <= took <= IDLE_S + 0.5, took


def test_half_sent_headers_get_408_in_json_and_the_connection_closes(guarded: Server) -> None:
    with connect(guarded) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        for _ in range(3):  # a slowloris trickle must not extend the deadline
            time.sleep(IDLE_S * 0.8)
            sock.sendall(b"a")
        resp = read_response(sock, timeout=BODY_TIMEOUT_S + 3, check_close=True)
    assert resp.status == 408 and "body_timeout_s" in json.loads(resp.body)["error"]
    assert resp.closed


def test_the_connection_past_max_connections_gets_503_and_is_closed(guarded: Server) -> None:
    held = [connect(guarded) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)  # let the server accept them all
        with connect(guarded) as extra:
            extra.sendall(request_bytes("GET", b"/v2/health/ready"))
            resp = read_response(extra, check_close=True)
        assert resp.status == 503 and resp.headers["retry-after"] == "1", resp
        assert "max_connections=600" in json.loads(resp.body)["error"] and resp.closed
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert httpx.get(f"{guarded.url}/v2/health/ready", timeout=5).status_code == 200


def test_stalled_uploads_do_not_slow_a_well_behaved_client(guarded: Server) -> None:
    """500 uploads that declare 1000 bytes and send 10: a client meanwhile gets every answer in
    well under 50 ms, and each stalled upload gets 408 once body_timeout_s has passed."""
    head = request_bytes("POST", b"/v2/models/demo/infer", {"Content-Type": "application/json", "Content-Length": "1000"})
    stalled = []
    try:
        for _ in range(STALLED):
            s = connect(guarded)
            s.sendall(head + b'{"inputs":')
            stalled.append(s)
        started = time.monotonic()
        doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 5, 4], "data": [0.5] * 20}]}
        latencies = []
        with httpx.Client(base_url=guarded.url, timeout=5) as client:
            client.get("/v2/health/ready")  # connect outside the measurement
            for i in range(60):
                t0 = time.perf_counter()
                resp = client.post("/v2/models/demo/infer", json=doc) if i % 2 else client.get("/v2/health/ready")
                latencies.append(time.perf_counter() - t0)
                assert resp.status_code == 200, resp.text
        assert time.monotonic() - started < BODY_TIMEOUT_S - 1, "measured after the stalled uploads timed out"
        assert "lstm_serve_inflight_requests 500.0" in guarded.metrics(), "the stalled uploads were not all held"
        p50, p95 = statistics.median(latencies), statistics.quantiles(latencies, n=20)[-1]
        assert p50 < 0.010 and p95 < 0.050, f"p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms"
        # ... and every stalled upload is answered 408 and closed at its deadline.
        answers = [read_response(s, timeout=BODY_TIMEOUT_S + 5) for s in stalled]
        assert {a.status for a in answers} == {408}
        assert all(closed_within(s, 2) is not None for s in stalled[:20])
    finally:
        for s in stalled:
            s.close()
    time.sleep(0.3)
    assert "lstm_serve_inflight_requests 0.0" in guarded.metrics()
