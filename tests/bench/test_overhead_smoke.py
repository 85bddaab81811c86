"""The pieces of ``bench.overhead`` that its numbers rest on: the floor server answers the bench's
own request body, connections are attributed to the process that holds them, and raw ORT's
curve is read at a fractional batch. No timing is asserted."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
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


def test_the_bare_floor_does_the_floors_work_over_keep_alive(tmp_path: Path) -> None:
    bodies = load.write_bodies(tmp_path, "fixed", "json", features=8)
    body = (bodies / "body1.bin").read_bytes()
    bare = Floor("bench.floor", "--bare")
    try:
        with httpx.Client(base_url=bare.url, timeout=10) as client:  # one connection, three answers
            for _ in range(3):
                resp = client.post("/v2/models/bench/infer", content=body)
                assert resp.status_code == 200 and resp.json()["outputs"][0]["shape"] == [1, 1]
        bad = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 2], "data": [1.0]}]})
        with pytest.raises(httpx.TransportError):  # it decodes: a body that does not is not answered
            httpx.post(f"{bare.url}/v2/models/bench/infer", content=bad, timeout=5)
    finally:
        bare.stop()


def test_raw_cpu_is_interpolated_on_log2_batch() -> None:
    curve = {"callers": 1, "cases": [{"batch": b, "callers": 1, "cpu_ms_per_seq": v}
                                     for b, v in ((1, 0.8), (2, 0.6), (4, 0.5), (16, 0.4))]}
    assert at_batch(curve, 1) == 0.8 and at_batch(curve, 4) == 0.5
    assert np.isclose(at_batch(curve, 8), 0.45)  # halfway between 4 and 16 on log2
    assert at_batch(curve, 64) == 0.4  # beyond the curve: its last value


def test_each_interleaved_cycle_takes_its_overhead_against_its_own_raw_measurement() -> None:
    """The reference moves with the machine: a cycle whose raw ONNX Runtime ran slower gives the
    same server figures a smaller overhead, and the report shows the raw figures it used."""
    from bench.overhead_interleaved import BARE, FLOOR, LEAN, RAW_BATCHES, _settings_key, derive, report

    layouts = {"one process": {"workers": 1}}

    def curve(us_at_16: float) -> dict:
        return {"callers": 1, "cases": [{"batch": b, "callers": 1, "cpu_ms_per_seq": us_at_16 * 16 / b / 1000}
                                        for b in RAW_BATCHES]}

    def server(cpu: float, req_s: float = 5000.0, busy: float = 0.8) -> dict:
        return {"req_s": req_s, "p99_ms": 9.0, "cpu_us_per_req": cpu, "loop_cpu_us_per_req": 70.0,
                "mean_batch": 16.0, "connections_per_process": [], "machine_busy": busy}

    cycles = []
    for raw_us in (200.0, 250.0):
        row = {FLOOR: server(40.0), BARE: server(25.0), LEAN: server(260.0, req_s=5500.0, busy=0.88),
               "one process": server(280.0)}
        curves = {_settings_key({"workers": 1}): curve(raw_us)}
        assert derive(row, layouts, curves) == 40.0
        cycles.append({"cycle": len(cycles) + 1, "targets": row, "raw": curves})
    assert [c["targets"]["one process"]["overhead_x_floor"] for c in cycles] == [2.0, 0.75]
    assert cycles[1]["targets"][LEAN]["cpu_efficiency"] == 250.0 / 260.0
    text = report({"command": "python -m bench.overhead --interleave", "cores": 2, "started": "now", "seconds": 4,
                   "model": "bench", "access_log": True, "cycles": cycles,
                   "raw": {_settings_key({"workers": 1}): curve(210.0)}})
    # machine busy, and what that throughput would be at 100 % busy: 1 / 0.8 for one process,
    # 1.1 / 0.88 for the batching floor (a bound from the same cycle's figures, not a measurement)
    assert "| one process | 5000 (5000-5000) | 1.00 (1.00-1.00) | 0.80 (0.80-0.80) | 1.25 (1.25-1.25) |" in text
    assert f"| {LEAN} | 5500 (5500-5500) | 1.10 (1.10-1.10) | 0.88 (0.88-0.88) | 1.25 (1.25-1.25) |" in text
    assert cycles[0]["targets"][LEAN]["vs_one_at_full_busy"] == pytest.approx(1.1 / 0.88)
    assert "| 225 (200-250) | 1.38 (0.75-2.00) |" in text  # the raw figure beside the overhead it gave
    assert "Measured again in every cycle" in text and "16: 225 (200-250)" in text


def test_profile_charges_each_sample_to_the_thread_that_took_it() -> None:
    """The event-loop share counts the main thread only: gRPC's poller (its one Python frame is
    Thread.run while it waits in C) was once read as 15 % of the loop."""
    from bench.profile import categorise

    raw = "\n".join([
        "thread (1): MainThread;Runner.run (asyncio/runners.py:118);decode_request (app/http/codec.py:190) 6",
        "thread (1): MainThread;Runner.run (asyncio/runners.py:118);RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py:522) 4",
        "thread (2): ort-bench:1_0;Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:83);"
        "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:406) 10",
        "thread (3): Thread-1 (_poll_wrapper);Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982) 7",
    ])
    r = categorise(raw)
    assert r["samples"] == 20 and r["idle_samples_left_out"] == 7
    assert r["thread_share_pct"] == {"event loop thread": 50.0, "ORT worker threads": 50.0, "other threads": 0.0}
    assert r["by_thread_pct"]["event loop thread"] == {"decode request (orjson + numpy)": 30.0, "uvicorn HTTP (httptools)": 20.0}


def test_the_batching_floor_answers_what_the_model_computes() -> None:
    """``bench.lean`` is only a fair rung if it does the work: its answers are the model's own
    output for each sequence, batched (its counts add up), on the server's ONNX Runtime session."""
    from concurrent.futures import ThreadPoolExecutor

    from app.config import Settings
    from app.engine import padding
    from app.engine.runtime import Runtime
    from app.v2.sequences import Sequences
    from bench.__main__ import model_path
    from bench.overhead import Lean

    path = model_path("tiny")
    runtime = Runtime(path, Settings())
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, 7, runtime.spec.input_size)).astype(np.float32) for _ in range(12)]
    lean = Lean(path)
    try:
        def post(x: np.ndarray) -> np.ndarray:
            body = orjson.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                             "data": x.reshape(-1).tolist()}]})
            resp = httpx.post(f"{lean.url}/v2/models/bench/infer", content=body, timeout=30)
            assert resp.status_code == 200
            out = resp.json()["outputs"][0]
            return np.asarray(out["data"], np.float32).reshape(out["shape"])

        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(post, xs))
        rows, batches = lean.batches()
    finally:
        lean.stop()
    assert rows == len(xs) and 1 <= batches <= len(xs)
    for x, y in zip(xs, got):
        feeds = padding.merge([Sequences(x, np.full(1, 7, np.int32))], runtime.spec).feeds
        np.testing.assert_allclose(y, runtime.run(feeds, ["output"])["output"], rtol=1e-5, atol=1e-6)


def test_profile_charges_the_servers_own_protocol_and_its_writes_to_the_http_protocol() -> None:
    """The direct path's frames (and the send under its write) are the HTTP protocol's, not the
    event loop's: they once showed as a third of the loop under "event loop"."""
    from bench.profile import categorise

    raw = "\n".join([
        "thread (1): MainThread;Runner.run (asyncio/runners.py:118);DirectHttpProtocol._serve (app/http/direct.py:170);"
        "reply (app/http/direct.py:160);CoalescingTransport.write (app/http/coalescing.py:60) 3",
        "thread (1): MainThread;Runner.run (asyncio/runners.py:118);DirectHttpProtocol._serve (app/http/direct.py:170);"
        "InferenceEntry.handle (app/http/entry.py:120) 1",
    ])
    shares = categorise(raw)["by_thread_pct"]["event loop thread"]
    assert shares == {"HTTP protocol and socket writes (app.http.direct, connections, coalescing)": 75.0,
                      "route + middleware (app.http.entry, inference, routes, middleware, guard)": 25.0}
