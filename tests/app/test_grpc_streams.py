"""Server-kept sequences over ``ModelStreamInfer`` (tritonclient.grpc's stream API): exact
chunk by chunk, answers in request order per sequence, errors as messages on a stream that goes
on, a sequence carried across streams, and SIGTERM during open streams (nothing accepted lost,
every process exits 0)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg

from tests.conftest import Reference, Server, alive, start_server

TOL = 1e-5


class Stream:
    """One tritonclient stream and the answers it got, in arrival order."""

    def __init__(self, target: str) -> None:
        self.client = tg.InferenceServerClient(target)
        self.answers: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.answers.put((result, error)))

    def send(self, x: np.ndarray, rid: str, seq: int | str, start: bool = False, end: bool = False,
             model: str = "uni") -> None:
        i = tg.InferInput("input", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        self.client.async_stream_infer(model, [i], request_id=rid, sequence_id=seq, sequence_start=start,
                                       sequence_end=end, outputs=[tg.InferRequestedOutput("output")])

    def take(self, n: int, timeout: float = 60) -> list:
        return [self.answers.get(timeout=timeout) for _ in range(n)]

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


@pytest.fixture
def streams(server: Server) -> Iterator[list[Stream]]:
    opened = [Stream(server.grpc_target) for _ in range(4)]
    yield opened
    for s in opened:
        s.close()


def _chunks(rng: np.random.Generator, x: np.ndarray) -> list[tuple[int, int]]:
    cuts, at = [], 0
    while at < len(x):
        step = int(rng.integers(1, 6))
        cuts.append((at, min(at + step, len(x))))
        at += step
    return cuts


def test_32_interleaved_chunked_sequences_each_equal_the_whole(streams: list[Stream], reference: Reference) -> None:
    rng = np.random.default_rng(21)
    seqs = {1000 + k: rng.standard_normal((int(rng.integers(2, 25)), 3)).astype(np.float32) for k in range(32)}
    plan = {sid: _chunks(rng, x) for sid, x in seqs.items()}
    sent = {s: 0 for s in range(len(streams))}
    nxt = {sid: 0 for sid in seqs}
    while any(nxt[sid] < len(plan[sid]) for sid in seqs):  # round-robin over the sequences: interleaved
        for k, sid in enumerate(seqs):
            if nxt[sid] == len(plan[sid]):
                continue
            i = nxt[sid]
            a, b = plan[sid][i]
            stream = k % len(streams)
            streams[stream].send(seqs[sid][None, a:b], f"{sid}:{i}", sid, start=i == 0, end=i == len(plan[sid]) - 1)
            sent[stream] += 1
            nxt[sid] += 1
    order: dict[int, list[int]] = {}
    worst = 0.0
    for stream, s in enumerate(streams):
        for result, error in s.take(sent[stream]):
            assert error is None, error
            sid, i = (int(p) for p in result.get_response().id.split(":"))
            order.setdefault(sid, []).append(i)
            b = plan[sid][i][1]
            want = reference.run("uni", seqs[sid][:b])["output"][0]
            worst = max(worst, float(np.abs(result.as_numpy("output")[0] - want).max()))
    assert worst <= TOL, f"chunked answers differ from the whole sequence by {worst}"
    assert order == {sid: list(range(len(plan[sid]))) for sid in seqs}, "answers out of request order"


def test_an_error_is_a_message_and_the_stream_goes_on(streams: list[Stream], reference: Reference) -> None:
    s = streams[0]
    x = np.random.default_rng(5).standard_normal((6, 3)).astype(np.float32)
    s.send(x[None, :3], "a", "text-id", start=True)
    s.send(np.ones((1, 2, 5), np.float32), "bad", "text-id")  # 5 features: refused, sequence untouched
    s.send(x[None, 3:], "b", "text-id", end=True)
    s.send(x[None, :1], "c", "text-id")  # ended: refused
    (r1, e1), (r2, e2), (r3, e3), (r4, e4) = s.take(4)
    assert e1 is None and e3 is None
    assert e2 is not None and "5 features per step" in e2.message()
    assert e4 is not None and "ended" in e4.message()
    np.testing.assert_allclose(r3.as_numpy("output")[0], reference.run("uni", x)["output"][0], atol=TOL)


def test_a_sequence_goes_on_over_another_stream(server: Server, reference: Reference) -> None:
    x = np.random.default_rng(6).standard_normal((9, 3)).astype(np.float32)
    first = Stream(server.grpc_target)
    first.send(x[None, :4], "1", 777, start=True)
    assert first.take(1)[0][1] is None
    first.close()  # the client reconnects; the state stays on the server
    second = Stream(server.grpc_target)
    second.send(x[None, 4:], "2", 777, end=True)
    (result, error), = second.take(1)
    second.close()
    assert error is None, error
    np.testing.assert_allclose(result.as_numpy("output")[0], reference.run("uni", x)["output"][0], atol=TOL)


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_sigterm_during_8_open_streams_answers_every_accepted_chunk(model_repo: Path, reference: Reference,
                                                                     tmp_path: Path, workers: int) -> None:
    # Chunks wait in the queue (long delay, no dispatch when idle) so SIGTERM finds them there.
    srv = start_server(model_repo, tmp_path, dispatch_when_idle="false", max_queue_delay_ms=1500,
                       max_batch_size=64, drain_timeout_s=10, workers=workers)
    children = [srv.processes()[0], *srv.processes()[1]] if workers > 1 else []
    rng = np.random.default_rng(9)
    opened = [Stream(srv.grpc_target) for _ in range(8)]
    xs = {}
    for k, s in enumerate(opened):
        for j in range(2):
            sid = 100 + 10 * k + j
            xs[sid] = rng.standard_normal((int(rng.integers(1, 20)), 3)).astype(np.float32)
            s.send(xs[sid][None], str(sid), sid, start=True)
    deadline = time.monotonic() + 10
    while f'lstm_serve_queue_depth{{model="uni",version="1"}} {len(xs)}.0' not in srv.metrics():
        assert time.monotonic() < deadline, "chunks never all queued"
        time.sleep(0.02)
    stopping = threading.Thread(target=lambda: setattr(srv, "code", srv.stop(timeout=30)))
    stopping.start()
    answered = {}
    for s in opened:
        for result, error in s.take(2):
            assert error is None, error
            answered[int(result.get_response().id)] = result.as_numpy("output")[0]
        _, end = s.take(1)[0]  # then the stream ends: UNAVAILABLE, reconnect elsewhere
        assert end is not None and "UNAVAILABLE" in str(end.status()) and "shutting down" in end.message()
    stopping.join()
    for s in opened:
        s.client.close()
    assert srv.code == 0, srv.log()[-3000:]
    assert sorted(answered) == sorted(xs)
    for sid, got in answered.items():
        np.testing.assert_allclose(got, reference.run("uni", xs[sid])["output"][0], atol=TOL)
    assert not any(alive(p) for p in children)
    if workers > 1:
        stopped = next(d for d in srv.log_lines() if d.get("msg") == "stopped")
        assert set(stopped["exit_codes"].values()) == {0}, stopped
