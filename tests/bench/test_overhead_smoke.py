"""The pieces of ``bench.overhead`` that its numbers rest on: the floor server answers the bench's
own request body, connections are attributed to the process that holds them, and raw ORT's
curve is read at a fractional batch. No timing is asserted."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import numpy as np
import orjson

from bench import load
from bench.overhead import Floor, at_batch, connections_per_process


def test_the_floor_decodes_the_bench_body_and_answers_a_constant(tmp_path: Path) -> None:
    bodies = load.write_bodies(tmp_path, "fixed", "json", features=8)
    body = (bodies / "body1.bin").read_bytes()
    floor = Floor()
    try:
        resp = httpx.post(f"{floor.url}/v2/models/bench/infer", content=body, timeout=10)
        assert resp.status_code == 200 and resp.json()["outputs"][0]["shape"] == [1, 1]
        with socket.create_connection(("127.0.0.1", floor.port)) as held:
            held.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert held.recv(4096).startswith(b"HTTP/1.1 200")
            assert connections_per_process(floor.port).get(floor.pid) == 1
        bad = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 2], "data": [1.0]}]})
        try:  # a body that does not decode is not answered 200: the floor does the decoding work
            assert httpx.post(f"{floor.url}/v2/models/bench/infer", content=bad, timeout=10).status_code == 500
        except httpx.TransportError:
            pass
    finally:
        floor.stop()


def test_raw_cpu_is_interpolated_on_log2_batch() -> None:
    curve = {"callers": 1, "cases": [{"batch": b, "callers": 1, "cpu_ms_per_seq": v}
                                     for b, v in ((1, 0.8), (2, 0.6), (4, 0.5), (16, 0.4))]}
    assert at_batch(curve, 1) == 0.8 and at_batch(curve, 4) == 0.5
    assert np.isclose(at_batch(curve, 8), 0.45)  # halfway between 4 and 16 on log2
    assert at_batch(curve, 64) == 0.4  # beyond the curve: its last value
