"""Dynamic batcher: a bounded asyncio queue, one future per request, model work off the loop.

In the manner of MLServer's adaptive batcher and Ray Serve's ``serve.batch``, with their known
faults fixed:

* The wait for a fuller batch is counted from the arrival of the *oldest waiting* request
  (monotonic clock), not from when the loop began to poll, so no request waits longer than
  ``max_delay`` for company.
* With ``dispatch_when_idle`` a request that finds nothing in flight is dispatched at once: a
  lone client pays no batching delay, and batches grow only while the runtime is busy.
* The queue is bounded in *sequences*; a full queue refuses up front (``QueueFull`` -> 503),
  so nothing accepted is lost and overload does not turn into unbounded latency.
* Which waiting requests form the next batch is a policy of its own (``scheduling``; by
  default the oldest request, joined by those closest to it in length, to cut padding).
* Requests whose caller went away (timeout) are dropped before their batch runs.
* At most ``max_in_flight`` batches run at once, each on a worker thread.

The batcher knows nothing of LSTMs: items have a size (sequences) and a length (time steps),
and ``run_batch`` turns a list of items into a list of results on a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from app.v2.errors import InferenceFailed, QueueFull, ShuttingDown
from app.metrics import ModelMetrics
from app.engine.scheduling import OldestClosestLength, Policy

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("lstm_serve.batcher")


@dataclass(frozen=True)
class Completed(Generic[R]):
    """A request's result and what it cost, for Server-Timing and logs."""

    result: R
    batch_size: int
    queue_s: float
    inference_s: float


@dataclass(eq=False)
class _Entry(Generic[T]):
    item: T
    size: int
    length: int
    future: asyncio.Future
    arrival: float = field(default_factory=time.monotonic)


class Batcher(Generic[T, R]):
    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_queue_size: int,
        max_delay_s: float,
        max_in_flight: int,
        dispatch_when_idle: bool,
        metrics: ModelMetrics,
        policy: Policy | None = None,
    ) -> None:
        self.name = name
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size
        self.max_delay_s = max_delay_s
        self.max_in_flight = max_in_flight
        self.dispatch_when_idle = dispatch_when_idle
        self._metrics = metrics
        self._policy: Policy = policy or OldestClosestLength()
        self._queue: list[_Entry[T]] = []
        self._queued = 0  # sequences waiting
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._executor = ThreadPoolExecutor(max_in_flight, thread_name_prefix=f"ort-{name}")
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._closing = False

    # -- admission ---------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Sequences waiting for a batch."""
        return self._queued

    def check_room(self, size: int = 1) -> None:
        """Refuse before any work is spent on a request that could not be queued."""
        if self._closing:
            raise ShuttingDown("server is shutting down; retry on another replica")
        if self._queued + size > self.max_queue_size:
            raise QueueFull(
                f"model '{self.name}' queue is full ({self._queued} of {self.max_queue_size} "
                "sequences waiting); retry later"
            )

    def enqueue(self, item: T, size: int, length: int) -> asyncio.Future:
        """Queue ``item`` (``size`` sequences of ``length`` steps); the future resolves to its
        :class:`Completed` (or the batch's error). Cancel it with :meth:`cancel`."""
        self.check_room(size)
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name=f"batcher-{self.name}")
        entry: _Entry[T] = _Entry(item, size, length, asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        self._set_queued(self._queued + size)
        self._wakeup.set()
        return entry.future

    def cancel(self, future: asyncio.Future) -> None:
        """The caller is gone (timeout, closed connection): its rows leave the queue now."""
        if not future.done():
            future.cancel()
        self._drop_cancelled()

    async def submit(self, item: T, size: int, length: int) -> Completed[R]:
        """Queue ``item`` and wait for its result."""
        future = self.enqueue(item, size, length)
        try:
            return await future
        finally:
            if not future.done() or future.cancelled():
                self.cancel(future)

    # -- the loop ----------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            await self._wait_for_work()
            if not self._queue and self._closing:
                return
            await self._slots.acquire()
            await self._wait_for_batch()
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            self._in_flight += 1
            # Hand the batch to its worker thread here, not in the task below: a new task runs
            # only after every callback already queued (answers being written), and the
            # runtime would sit idle meanwhile.
            dispatched = time.monotonic()
            work = asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_batch, [e.item for e in batch]
            )
            task = asyncio.create_task(self._finish(batch, work, dispatched))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _wait_for_work(self) -> None:
        while True:
            self._drop_cancelled()
            if self._queue or self._closing:
                return
            self._wakeup.clear()
            await self._wakeup.wait()

    def _idle(self) -> bool:
        return self.dispatch_when_idle and self._in_flight == 0

    async def _wait_for_batch(self) -> None:
        """Wait until a full batch is queued, the oldest request's delay is spent, or the
        runtime goes idle (then waiting would only add latency)."""
        while self._queued < self.max_batch_size and not self._idle() and not self._closing:
            self._drop_cancelled()
            if not self._queue:
                return
            remaining = self._queue[0].arrival + self.max_delay_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            timer = asyncio.get_running_loop().call_later(remaining, self._wakeup.set)
            try:
                await self._wakeup.wait()  # a new request, a finished batch, or the deadline
            finally:
                timer.cancel()

    def _drop_cancelled(self) -> None:
        if any(e.future.done() for e in self._queue):
            kept = [e for e in self._queue if not e.future.done()]
            self._queue = kept
            self._set_queued(sum(e.size for e in kept))

    def _take(self) -> list[_Entry[T]]:
        """The next batch, as the selection policy picks it, out of the queue."""
        self._drop_cancelled()
        batch = self._policy.select(self._queue, self.max_batch_size)
        if len(batch) == len(self._queue):
            self._queue = []
        else:
            chosen = set(map(id, batch))
            self._queue = [e for e in self._queue if id(e) not in chosen]
        self._set_queued(self._queued - sum(e.size for e in batch))
        return batch

    async def _finish(self, batch: list[_Entry[T]], work: asyncio.Future, dispatched: float) -> None:
        """Wait for a batch, free its slot, then answer its requests."""
        size = sum(e.size for e in batch)
        self._metrics.batch_size.observe(size)
        for e in batch:
            self._metrics.queue_duration.observe(dispatched - e.arrival)
        failure: InferenceFailed | None = None
        try:
            results = await work
        except Exception as exc:
            log.exception("batch of %d sequences failed on model %s", size, self.name)
            failure = InferenceFailed(f"inference failed on model '{self.name}': {exc}")
        finally:
            # The slot is freed before the answers go out, so the loop can dispatch the next
            # batch ahead of the response writing that the answers trigger.
            self._in_flight -= 1
            self._slots.release()
            self._wakeup.set()
        elapsed = time.monotonic() - dispatched
        if failure is not None:
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(failure)
            return
        for e, r in zip(batch, results, strict=True):
            if not e.future.done():
                e.future.set_result(Completed(r, size, dispatched - e.arrival, elapsed))

    def _set_queued(self, n: int) -> None:
        # inc/dec, not set: several loaded versions of one model share the {model} gauge.
        self._metrics.queue_depth.inc(n - self._queued)
        self._queued = n

    # -- shutdown ----------------------------------------------------------------------------
    async def drain(self, timeout_s: float) -> None:
        """Refuse new work, answer everything queued and in flight, then stop."""
        self._closing = True
        self._wakeup.set()
        pending = [t for t in (self._loop_task, *self._tasks) if t is not None]
        try:
            await asyncio.wait_for(self._wait_drained(), timeout_s)
        except TimeoutError:
            log.error("model %s: drain timed out with %d sequences queued", self.name, self._queued)
            for e in self._queue:
                if not e.future.done():
                    e.future.set_exception(ShuttingDown("server shut down before this request ran"))
            for t in pending:
                t.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _wait_drained(self) -> None:
        while self._queue or self._tasks:
            if self._tasks:
                await asyncio.wait(list(self._tasks))
            else:
                await asyncio.sleep(0.001)
        if self._loop_task is not None:
            await self._loop_task
