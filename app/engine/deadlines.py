"""Request deadlines: one timer for every waiting request that shares a timeout.

Why: :meth:`app.engine.engine.Engine.submit_within` armed a timer per request (``call_later``)
and cancelled it once answered; under load that, with its closure, was ~8 us of the event loop
per request (``python -m bench.knockout --engine real``, the deadline knocked out), more than
the request metrics and as much as the access line. Requests that share a timeout (every HTTP
request: ``request_timeout_s``) reach their deadlines in the order they started waiting, so
they queue in arrival order behind one timer armed for the oldest: starting and finishing a
wait is an append and a pop, and the timer fires about once per timeout, not once per request.
A timeout of its own (a gRPC client's deadline) gets a queue of its own, dropped once empty.

On expiry the waiting task is cancelled and the wait marked ``expired``, exactly as the timer
per request did: the cancellation drops the queued job, and ``submit_within`` turns it into
RequestTimeout.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Wait:
    """One request's wait: its timeout, its deadline (loop time), its task, whether the deadline
    passed."""

    __slots__ = ("timeout_s", "when", "task", "expired")

    def __init__(self, timeout_s: float, when: float, task: asyncio.Task | None) -> None:
        self.timeout_s = timeout_s
        self.when = when
        self.task = task  # None once the wait is over
        self.expired = False


class _Queue:
    """The waits of one timeout, oldest first, and the one timer for the oldest."""

    __slots__ = ("waits", "timer")

    def __init__(self) -> None:
        self.waits: deque[Wait] = deque()
        self.timer: asyncio.TimerHandle | None = None


class Deadlines:
    """Deadlines of the requests waiting in one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._queues: dict[float, _Queue] = {}

    def start(self, task: asyncio.Task, timeout_s: float) -> Wait:
        """``task`` waits at most ``timeout_s`` from now; call :meth:`finish` when it is over."""
        queue = self._queues.get(timeout_s)
        if queue is None:
            queue = self._queues[timeout_s] = _Queue()
        wait = Wait(timeout_s, self.loop.time() + timeout_s, task)
        queue.waits.append(wait)
        if queue.timer is None:
            queue.timer = self.loop.call_at(wait.when, self._fire, timeout_s)
        return wait

    def finish(self, wait: Wait) -> None:
        """The wait is over (answered, refused, expired or cancelled)."""
        wait.task = None
        timeout_s = wait.timeout_s
        queue = self._queues.get(timeout_s)
        if queue is None:
            return
        waits = queue.waits
        while waits and waits[0].task is None:  # answers come back roughly in arrival order
            waits.popleft()
        if not waits:
            if queue.timer is not None:
                queue.timer.cancel()
            del self._queues[timeout_s]

    def _fire(self, timeout_s: float) -> None:
        queue = self._queues.get(timeout_s)
        if queue is None:
            return
        queue.timer = None
        waits = queue.waits
        now = self.loop.time()
        while waits and (waits[0].task is None or waits[0].when <= now):
            wait = waits.popleft()
            if wait.task is not None:
                wait.expired = True
                wait.task.cancel()
        if waits:
            # Only the oldest waiting request's deadline is armed (uvloop rounds to whole
            # milliseconds: one that fires early finds nothing due and arms again).
            queue.timer = self.loop.call_at(waits[0].when, self._fire, timeout_s)
        else:
            del self._queues[timeout_s]
