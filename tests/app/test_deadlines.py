"""Request deadlines (``app.engine.deadlines``): one timer per timeout, requests cancelled at
their own deadline, nothing touched once answered, nothing kept once every wait is over."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from app.engine.deadlines import Deadlines


def run(coro):  # type: ignore[no-untyped-def]
    return uvloop.run(coro)


async def _waiter(deadlines: Deadlines, timeout_s: float, hold_s: float, log: list[str], name: str) -> None:
    task = asyncio.current_task()
    assert task is not None
    wait = deadlines.start(task, timeout_s)
    try:
        await asyncio.sleep(hold_s)
        log.append(f"{name} answered")
    except asyncio.CancelledError:
        assert wait.expired and task.uncancel() == 0
        log.append(f"{name} expired")
    finally:
        deadlines.finish(wait)


def test_requests_sharing_a_timeout_share_one_timer_and_expire_at_their_own_deadline() -> None:
    async def main() -> tuple[list[str], int, int]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        log: list[str] = []
        tasks = [loop.create_task(_waiter(deadlines, 0.3, 0.05, log, "quick"))]
        await asyncio.sleep(0.02)
        tasks.append(loop.create_task(_waiter(deadlines, 0.3, 5.0, log, "slow")))  # still waiting at 0.32 s
        await asyncio.sleep(0.02)
        tasks.append(loop.create_task(_waiter(deadlines, 0.3, 0.1, log, "later")))
        await asyncio.sleep(0)
        queues, timers = len(deadlines._queues), sum(q.timer is not None for q in deadlines._queues.values())
        started = loop.time()
        await asyncio.gather(*tasks)
        assert 0.25 < loop.time() - started < 1.0  # the slow one went at its deadline, not after 5 s
        assert not deadlines._queues  # every wait over: nothing kept, no timer left
        return log, queues, timers

    log, queues, timers = run(main())
    assert (queues, timers) == (1, 1)
    assert log == ["quick answered", "later answered", "slow expired"]


def test_a_timeout_of_its_own_gets_its_own_queue_and_a_shorter_one_expires_first() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        log: list[str] = []
        long = loop.create_task(_waiter(deadlines, 0.4, 5.0, log, "long"))
        await asyncio.sleep(0.01)
        short = loop.create_task(_waiter(deadlines, 0.1, 5.0, log, "short"))  # started later, due earlier
        await asyncio.sleep(0)
        assert len(deadlines._queues) == 2
        await asyncio.gather(long, short)
        assert not deadlines._queues
        return log

    assert run(main()) == ["short expired", "long expired"]


def test_a_cancellation_from_outside_is_not_taken_for_an_expiry() -> None:
    async def main() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        task = loop.create_task(asyncio.sleep(5))
        wait = deadlines.start(task, 0.5)
        await asyncio.sleep(0.01)
        task.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await task
        deadlines.finish(wait)
        return wait.expired, bool(deadlines._queues)

    assert run(main()) == (False, False)
