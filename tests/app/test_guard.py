"""The front door on a real server: a body that does not arrive within body_timeout_s gets 408
and a closed connection, one that trickles in within it is served (issue 15, item 1)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, start_server
from tests.rawhttp import read_response, request_bytes

BODY_TIMEOUT_S = 1.5
DOC = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2, 4], "data": [0.5] * 8}]}).encode()


@pytest.fixture(scope="module")
def impatient(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(model_repo, tmp_path_factory.mktemp("logs"), body_timeout_s=BODY_TIMEOUT_S)
    yield srv
    srv.stop()


def send_slowly(server: Server, raw: bytes, pieces: int, gap_s: float):
    """Headers at once, then the body in ``pieces`` with ``gap_s`` between them; the answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + b"\r\n\r\n")
        step = -(-len(body) // pieces)
        try:
            for i in range(0, len(body), step):
                time.sleep(gap_s)
                sock.sendall(body[i : i + step])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: read what it said
        return read_response(sock, timeout=BODY_TIMEOUT_S + 5, check_close=True)


def test_a_stalled_body_gets_408_and_the_connection_is_closed(impatient: Server) -> None:
    head = request_bytes("POST", b"/v2/models/demo/infer", {"Content-Type": "application/json", "Content-Length": "1000"})
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as sock:
        sock.sendall(head + DOC[:10])
        resp = read_response(sock, timeout=BODY_TIMEOUT_S + 5, check_close=True)
    assert resp.status == 408, resp
    assert "body_timeout_s=1.5" in json.loads(resp.body)["error"]
    assert resp.headers["connection"] == "close" and resp.closed
    assert BODY_TIMEOUT_S - 0.1 <= resp.elapsed_s <= BODY_TIMEOUT_S + 1.0, resp.elapsed_s
    assert 'code="408"' in impatient.metrics()


def test_a_body_trickling_in_within_the_deadline_is_served(impatient: Server) -> None:
    raw = request_bytes("POST", b"/v2/models/demo/infer", {"Content-Type": "application/json"}, DOC)
    resp = send_slowly(impatient, raw, pieces=5, gap_s=BODY_TIMEOUT_S / 10)
    assert resp.status == 200, resp
    assert json.loads(resp.body)["outputs"][0]["shape"] == [1, 1]
    assert resp.closed is False  # keep-alive as usual


def test_a_body_trickling_past_the_deadline_gets_408(impatient: Server) -> None:
    raw = request_bytes("POST", b"/v2/models/demo/infer", {"Content-Type": "application/json"}, DOC)
    resp = send_slowly(impatient, raw, pieces=8, gap_s=BODY_TIMEOUT_S / 4)
    assert resp.status == 408 and resp.closed, resp


def test_a_body_nobody_reads_still_ends_with_its_connection(impatient: Server) -> None:
    # GET answers without reading the declared body; a client that then stalls is cut off.
    head = request_bytes("GET", b"/v2/health/ready", {"Content-Length": "100"})
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as sock:
        sock.sendall(head + b"0123456789")
        t0 = time.monotonic()
        assert read_response(sock).status == 200
        sock.settimeout(BODY_TIMEOUT_S + 3)
        assert sock.recv(1) == b""  # closed by the server
    assert time.monotonic() - t0 <= BODY_TIMEOUT_S + 1.0
