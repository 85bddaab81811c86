"""Inference requests that arrive whole are answered by the connection's protocol without ASGI
(``app.http.direct``); every other request keeps uvicorn's cycle, with the same answer.

In-process (the real entry, engine and ONNX Runtime behind the real protocol, bytes fed as a
socket would): which requests take which path. On a real server, in both layouts: a body split
across reads, pipelined requests, ``Connection: close``, and every request the protocol leaves to
uvicorn answer exactly as a plain one does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import uvicorn
import uvloop
from uvicorn.server import ServerState as UvicornState

from app.config import Settings
from app.http.connections import protocol_class
from app.http.direct import MAX_BODY, DirectHttpProtocol
from app.http.entry import entry
from app.server import create_app
from tests.conftest import Server
from tests.rawhttp import exchange, read_response, request_bytes

PATH = b"/v2/models/uni/infer"
JSON = {"Content-Type": "application/json"}


def body_for(seed: int, steps: int = 4) -> bytes:
    x = np.random.default_rng(seed).standard_normal((1, steps, 3)).astype(np.float32)
    return orjson.dumps({"inputs": [{"name": "input", "shape": [1, steps, 3], "datatype": "FP32",
                                     "data": x.ravel().tolist()}]})


def outputs(body: bytes) -> dict[str, list[float]]:
    return {o["name"]: o["data"] for o in json.loads(body)["outputs"]}


# -- which path, in-process -----------------------------------------------------------------


class _Transport(asyncio.Transport):
    """What a socket would receive: everything written, and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False
        self.closed_by_server = False  # before the test's own connection_lost

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def plain(body: bytes, **headers: str) -> bytes:
    return request_bytes("POST", PATH, {**JSON, **headers}, body)


CASES: dict[str, tuple[list[bytes], str]] = {
    # name: (the reads, the path the first request takes)
    "plain": ([plain(body_for(1))], "direct"),
    "versioned path": ([request_bytes("POST", b"/v2/models/uni/versions/1/infer", JSON, body_for(1))], "direct"),
    "connection close": ([plain(body_for(1), Connection="close")], "direct"),
    "body in a later read": ([plain(body_for(1))[:-20], plain(body_for(1))[-20:]], "asgi"),
    "headers alone first": ([plain(body_for(1)).partition(b"\r\n\r\n")[0] + b"\r\n\r\n",
                             plain(body_for(1)).partition(b"\r\n\r\n")[2]], "asgi"),
    "HTTP/1.0": ([plain(body_for(1)).replace(b"HTTP/1.1", b"HTTP/1.0", 1)], "asgi"),
    "Expect: 100-continue": ([plain(body_for(1), Expect="100-continue")], "asgi"),
    "chunked": ([b"POST /v2/models/uni/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"%x\r\n" % len(body_for(1)) + body_for(1) + b"\r\n0\r\n\r\n"], "asgi"),
    "body over MAX_BODY": ([request_bytes("POST", PATH, {**JSON, "Content-Length": str(MAX_BODY + 1)})], "asgi"),
    "escaped path": ([request_bytes("POST", b"/v2/models/%75ni/infer", JSON, body_for(1))], "asgi"),
    "another route": ([request_bytes("GET", b"/v2/health/ready")], "asgi"),
}


async def _answers(transport: _Transport, n: int) -> None:
    """Until ``n`` final answers were written (10 s at most)."""
    deadline = time.monotonic() + 10
    while b"".join(transport.written).count(b"HTTP/1.1 2") < n and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def _serve(repo: Path, reads: list[bytes], answered: bool, in_turn: bool = False) -> tuple[str, _Transport, Any]:
    """Feed ``reads`` to a new connection of the real protocol (``in_turn``: each once the one
    before is answered); the path the first request took, what was written, the protocol."""
    settings = Settings(model_repository=repo, access_log=False, warmup=False)
    app = create_app(settings)
    state = app.state.server
    front = entry(app, state, None)
    config = uvicorn.Config(front, http=protocol_class(100, 10.0, DirectHttpProtocol, entry=front),
                            lifespan="off", loop="none", log_config=None)
    config.load()
    await state.start_engine()
    try:
        protocol = config.http_protocol_class(config=config, server_state=UvicornState(), app_state={})
        transport = _Transport()
        protocol.connection_made(transport)
        taken = ""
        for i, data in enumerate(reads):
            protocol.data_received(data)
            taken = taken or ("direct" if type(protocol.cycle).__name__ == "_Direct" else "asgi")
            if in_turn:
                await _answers(transport, i + 1)
            else:
                await asyncio.sleep(0.05)
        if answered:
            await _answers(transport, 1)
        await asyncio.sleep(0.05)
        transport.closed_by_server = transport.closed
        protocol.connection_lost(None)
        return taken, transport, protocol
    finally:
        await state.engine.close(5)


@pytest.mark.parametrize("case", list(CASES))
def test_only_plain_whole_inference_requests_are_served_directly(model_repo: Path, case: str) -> None:
    reads, expected = CASES[case]
    answered = case != "body over MAX_BODY"  # uvicorn waits for a body these reads never send
    taken, transport, protocol = uvloop.run(_serve(model_repo, reads, answered))
    assert taken == expected
    out = b"".join(transport.written)
    if not answered:
        assert out == b""
        return
    if case == "Expect: 100-continue":
        assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        out = out.partition(b"\r\n\r\n")[2]
    assert out.startswith(b"HTTP/1.1 200 OK\r\n"), out[:300]
    if expected == "direct":
        assert len(transport.written) == 1  # head and body in one write
        assert (b"connection: close" in out) == (case == "connection close")
        assert transport.closed_by_server == (case == "connection close")
        assert protocol.cycle.response_complete


def test_an_answered_request_keeps_nothing_of_those_before_it(model_repo: Path) -> None:
    # A chain of them once held every request of a keep-alive connection: full collections grew
    # with it and stalled the event loop (p99 60-80 ms at 32 connections).
    reads = [plain(body_for(seed)) for seed in (1, 2, 3)]
    taken, transport, protocol = uvloop.run(_serve(model_repo, reads, True, in_turn=True))
    assert taken == "direct"
    assert b"".join(transport.written).count(b"HTTP/1.1 200 OK") == 3
    assert len(transport.written) == 3
    assert protocol.cycle.response_complete and protocol.cycle.previous is None


# -- the same answers on a real server ------------------------------------------------------


def answer(server: Server, raw: bytes, pause_after: int | None = None) -> Any:
    """Send ``raw`` on a new connection (with a pause after ``pause_after`` bytes); read one answer."""
    if pause_after is None:
        return exchange(f"127.0.0.1:{server.port}", raw, check_close=True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw[:pause_after])
        time.sleep(0.2)
        sock.sendall(raw[pause_after:])
        return read_response(sock, check_close=True)


def test_every_path_gives_the_same_answer(server: Server) -> None:
    body = body_for(7)
    whole = answer(server, plain(body))
    assert whole.status == 200 and whole.closed is False
    expected = outputs(whole.body)
    padded = body[:-1] + b" " * (MAX_BODY + 10) + body[-1:]  # JSON whitespace: too large to be served directly
    others = {
        "body in a later read": answer(server, plain(body), pause_after=len(plain(body)) - 30),
        "HTTP/1.0": answer(server, plain(body).replace(b"HTTP/1.1", b"HTTP/1.0", 1)),
        "escaped path": answer(server, request_bytes("POST", b"/v2/models/%75ni/infer", JSON, body)),
        "large body": answer(server, plain(padded)),
    }
    for name, got in others.items():
        assert got.status == 200, (name, got.body[:300])
        assert outputs(got.body) == expected, name
    # The same headers whichever path answered (values that differ per request aside).
    split = others["body in a later read"]
    assert set(whole.headers) == set(split.headers)
    for key in ("content-type", "content-length", "x-batch-size"):
        assert whole.headers[key] == split.headers[key], key
    assert whole.headers["server-timing"].startswith("queue;dur=")
    assert others["HTTP/1.0"].closed is True


def test_connection_close_is_answered_then_closed(server: Server) -> None:
    got = answer(server, plain(body_for(3), Connection="close"))
    assert got.status == 200
    assert got.headers.get("connection") == "close"
    assert got.closed is True


def test_pipelined_inference_requests_are_answered_in_order(server: Server) -> None:
    bodies = [body_for(seed) for seed in (11, 12, 13)]
    singles = [outputs(answer(server, plain(b)).body) for b in bodies]
    raw = b"".join(plain(b, **({"Connection": "close"} if i == 2 else {})) for i, b in enumerate(bodies))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw)
        got = [read_response(sock) for _ in bodies]
        sock.settimeout(5)
        assert sock.recv(1) == b""  # closed after the last, which asked for it
    assert [g.status for g in got] == [200, 200, 200]
    assert [outputs(g.body) for g in got] == singles


def test_a_client_that_leaves_with_requests_pipelined_leaves_no_error(server: Server) -> None:
    # The first request of each connection is answered directly, the others wait in uvicorn's
    # pipeline; the client closes (or resets) the connection without reading. An answer written
    # once the server had closed its side raised in uvloop's transport and logged a traceback.
    log = Path(server.log_path)
    before = log.read_text(errors="replace").count("Exception in ASGI application")
    raw = plain(body_for(5)) * 3
    for i in range(40):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(raw)
            if i % 2:  # a reset; else an orderly close, the answers unread
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(1.0)
    assert answer(server, plain(body_for(5))).status == 200
    assert log.read_text(errors="replace").count("Exception in ASGI application") == before
