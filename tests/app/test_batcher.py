"""The dynamic batcher's queueing and timing, driven by a real worker function on its threads.

The worker records each batch it is given and sleeps to stand in for model time, so the tests
can assert what went into which batch and when.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.engine.batcher import Batcher
from app.v2.errors import InferenceFailed, QueueFull, ShuttingDown
from app.metrics import Metrics


class Worker:
    def __init__(self, seconds: float = 0.0, fail_on: str | None = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.batches: list[list[str]] = []
        self._lock = threading.Lock()

    def __call__(self, items: list[str]) -> list[str]:
        with self._lock:
            self.batches.append(list(items))
        if self.fail_on in items:
            raise RuntimeError("model exploded")
        time.sleep(self.seconds)
        return [f"done:{i}" for i in items]


def make(worker: Worker, **kw: object) -> Batcher[str, str]:
    opts = dict(max_batch_size=8, max_queue_size=16, max_delay_s=0.05, max_in_flight=1, dispatch_when_idle=True)
    opts.update(kw)
    return Batcher("t", worker, metrics=Metrics(8).for_model("t", "1", "cpu"), **opts)  # type: ignore[arg-type]


def run(coro):  # one event loop per test, like the server has one
    return asyncio.run(coro)


def test_lone_request_is_dispatched_at_once_despite_a_long_delay() -> None:
    async def go():
        b = make(Worker(), max_delay_s=5.0)
        t0 = time.monotonic()
        done = await b.submit("a", 1, 10)
        return done, time.monotonic() - t0

    done, elapsed = run(go())
    assert done.result == "done:a" and done.batch_size == 1
    assert elapsed < 1.0


def test_batches_grow_while_the_runtime_is_busy() -> None:
    worker = Worker(seconds=0.1)

    async def go():
        b = make(worker)
        first = asyncio.create_task(b.submit("a", 1, 10))
        await asyncio.sleep(0.02)  # "a" is running now
        rest = [asyncio.create_task(b.submit(f"r{i}", 1, 10)) for i in range(6)]
        return await first, await asyncio.gather(*rest)

    first, rest = run(go())
    assert first.batch_size == 1
    assert worker.batches[0] == ["a"] and worker.batches[1] == [f"r{i}" for i in range(6)]
    assert {r.batch_size for r in rest} == {6}


def test_delay_counts_from_the_oldest_arrival_not_from_polling() -> None:
    async def go():
        b = make(Worker(), max_delay_s=0.3, dispatch_when_idle=False)
        t0 = time.monotonic()
        a = asyncio.create_task(b.submit("a", 1, 5))
        await asyncio.sleep(0.2)
        late = asyncio.create_task(b.submit("b", 1, 5))
        ra, rb = await a, await late
        return ra, rb, time.monotonic() - t0

    ra, rb, elapsed = run(go())
    assert ra.batch_size == 2  # both went together, at "a"'s deadline
    assert 0.28 <= ra.queue_s < 0.45, ra.queue_s
    assert rb.queue_s < 0.2, rb.queue_s  # "b" did not restart the clock
    assert elapsed < 0.5


def test_a_full_batch_does_not_wait_for_the_delay() -> None:
    async def go():
        b = make(Worker(), max_batch_size=4, max_delay_s=5.0, dispatch_when_idle=False)
        t0 = time.monotonic()
        results = await asyncio.gather(*(b.submit(str(i), 1, 3) for i in range(4)))
        return results, time.monotonic() - t0

    results, elapsed = run(go())
    assert [r.batch_size for r in results] == [4] * 4 and elapsed < 1.0


def test_a_full_queue_refuses_up_front() -> None:
    async def go():
        b = make(Worker(seconds=0.2), max_queue_size=8, max_batch_size=8)
        first = asyncio.create_task(b.submit("busy", 1, 1))
        await asyncio.sleep(0.02)
        waiting = asyncio.create_task(b.submit("w", 6, 1))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="queue is full"):
            await b.submit("x", 3, 1)
        await b.submit("fits", 2, 1)
        await first, await waiting

    run(go())


def test_requests_whose_caller_left_never_run() -> None:
    worker = Worker(seconds=0.1)

    async def go():
        b = make(worker, max_delay_s=0.3, dispatch_when_idle=False)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.submit("gone", 1, 1), 0.05)
        assert b.queued == 0
        return await b.submit("kept", 1, 1)

    done = run(go())
    assert done.result == "done:kept"
    assert all("gone" not in batch for batch in worker.batches)


def test_oldest_goes_first_with_the_closest_lengths() -> None:
    worker = Worker(seconds=0.1)

    async def go():
        b = make(worker, max_batch_size=2, max_delay_s=0.0)
        busy = asyncio.create_task(b.submit("busy", 1, 50))
        await asyncio.sleep(0.02)
        tasks = [asyncio.create_task(b.submit(name, 1, length)) for name, length in
                 [("l10", 10), ("l100", 100), ("l101", 101), ("l11", 11)]]
        await asyncio.sleep(0)
        await busy
        await asyncio.gather(*tasks)

    run(go())
    assert worker.batches[1] == ["l10", "l11"]
    assert worker.batches[2] == ["l100", "l101"]


def test_a_failing_batch_fails_only_its_requests() -> None:
    worker = Worker(fail_on="bad")

    async def go():
        b = make(worker)
        with pytest.raises(InferenceFailed, match="model exploded"):
            await b.submit("bad", 1, 1)
        return await b.submit("good", 1, 1)

    assert run(go()).result == "done:good"


def test_drain_answers_everything_queued_then_refuses() -> None:
    async def go():
        b = make(Worker(seconds=0.05), max_batch_size=2, max_delay_s=0.0)
        tasks = [asyncio.create_task(b.submit(str(i), 1, 1)) for i in range(7)]
        await asyncio.sleep(0.01)
        await b.drain(timeout_s=5)
        results = await asyncio.gather(*tasks)
        with pytest.raises(ShuttingDown):
            await b.submit("late", 1, 1)
        return results

    results = run(go())
    assert [r.result for r in results] == [f"done:{i}" for i in range(7)]


def test_a_sub_millisecond_wait_on_uvloop_loses_no_answer() -> None:
    """The server's loop is uvloop, which rounds a timer's delay to whole milliseconds and
    hands back a plain Handle (no ``when()``) for one that rounds to 0. The batcher once read
    ``when()`` off its armed timer: when a batch finished while another finish had just armed
    a wait under 0.5 ms, the callback raised and that batch's answers were never delivered
    (requests timed out after request_timeout_s in CI).

    Here two batches finish in the same loop turn while a third request's delay has ~0.4 ms
    left: the first finish arms the short wait, the second arms again."""
    uvloop = pytest.importorskip("uvloop")
    gate, returned = threading.Event(), []
    errors: list[dict] = []

    def worker(items: list[str]) -> list[str]:
        gate.wait(5)
        returned.append(items)
        return [f"done:{i}" for i in items]

    async def go() -> list[str]:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        b = Batcher("t", worker, max_batch_size=2, max_queue_size=16, max_delay_s=0.02, max_in_flight=2,
                    dispatch_when_idle=False, metrics=Metrics(8).for_model("t", "1", "cpu"))
        full = [b.enqueue("a", 2, 1), b.enqueue("b", 2, 1)]  # a full batch each: both run now
        await asyncio.sleep(0.005)
        arrival = time.monotonic()
        last = b.enqueue("c", 1, 1)  # waits up to 20 ms for company
        gate.set()
        # Hold the loop (both finishes queue up behind it) until c's wait has ~0.4 ms left.
        while len(returned) < 2 or time.monotonic() < arrival + 0.0196:
            time.sleep(0.00005)
        done = await asyncio.wait_for(asyncio.gather(*full, last), 5)
        return [d.result for d in done]

    assert uvloop.run(go()) == ["done:a", "done:b", "done:c"]
    assert not errors, errors[0].get("exception")


def test_a_batch_is_answered_even_when_dispatching_the_next_one_raises() -> None:
    """A finished batch hands the runtime the next one before delivering its own answers; a
    bug in that hand-off (here the selection policy raises) must not cost the finished batch
    its answers. The error goes to the loop's exception handler."""
    errors: list[dict] = []

    class FailsOnSecondSelection:
        calls = 0

        def select(self, queue: list, room: int) -> list:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("policy bug")
            return list(queue[:room])

    async def go() -> tuple[str, str]:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        b = make(Worker(seconds=0.05), policy=FailsOnSecondSelection())
        first = b.enqueue("a", 1, 1)  # dispatched at once
        await asyncio.sleep(0.01)
        second = b.enqueue("b", 1, 1)  # queued: selected when "a" finishes, and that raises
        done = await asyncio.wait_for(first, 5)
        b.enqueue("c", 1, 1)  # the next event dispatches again (the third selection works)
        return done.result, (await asyncio.wait_for(second, 5)).result

    assert run(go()) == ("done:a", "done:b")
    assert [str(e.get("exception")) for e in errors] == ["policy bug"]
