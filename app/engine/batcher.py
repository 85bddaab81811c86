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
* At most ``max_in_flight`` batches run at once, each on a worker thread; a finished batch
  hands the runtime the next one in the callback that reports it, before its own answers are
  written (one process, 2 cores, 32 JSON clients, same run: 2,334 req/s against 1,873 before
  this issue's work, p99 26 against 46 ms; bench/results/overhead-event-batcher.md).

The batcher knows nothing of LSTMs: items have a size (sequences) and a length (time steps),
and ``run_batch`` turns a list of items into a list of results on a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from app.v2.errors import InferenceFailed, QueueFull, ShuttingDown
from app.metrics import ModelMetrics
from app.engine.scheduling import OldestClosestLength, Policy

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("lstm_serve.batcher")


@dataclass(slots=True, eq=False)
class Completed(Generic[R]):
    """A request's result and what it cost, for Server-Timing and logs (one per request: not
    frozen, which costs ``object.__setattr__`` per field, 0.83 us against 0.24)."""

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
        self._executor = ThreadPoolExecutor(max_in_flight, thread_name_prefix=f"ort-{name}")
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # the first enqueue's
        self._timer: asyncio.Handle | None = None  # armed for the oldest request's delay
        self._timer_when = 0.0  # loop time it fires at
        self._kick_scheduled = False
        self._settled: asyncio.Event | None = None  # set when nothing is queued or in flight (drain)
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
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        entry: _Entry[T] = _Entry(item, size, length, self._loop.create_future())
        self._queue.append(entry)
        self._set_queued(self._queued + size)
        if self._in_flight < self.max_in_flight:
            self._kick_soon()
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

    # -- dispatch ----------------------------------------------------------------------------
    # No loop task: a batch is dispatched from whichever event makes it due (a request queued,
    # a batch finished, the oldest request's delay spent), with no hop through a task, an Event
    # or a semaphore in between. A finished batch hands the runtime its next batch in the very
    # callback that reports it, before its answers are written: every loop turn between the two
    # (each behind every request the loop has ready) is time the runtime sits idle.
    def _kick(self) -> None:
        """Dispatch every batch that is due, else arm the timer for the oldest request's delay."""
        self._kick_scheduled = False
        while self._in_flight < self.max_in_flight:
            self._drop_cancelled()
            if not self._queue:
                return
            if self._queued < self.max_batch_size and not self._idle() and not self._closing:
                wait = self._queue[0].arrival + self.max_delay_s - time.monotonic()
                if wait > 0:
                    self._arm(wait)
                    return
            self._dispatch(self._take())

    def _kick_soon(self) -> None:
        """A kick after the callbacks the loop already has ready: requests that arrived together
        (one read of many connections) are queued by then and go in one batch."""
        if not self._kick_scheduled:
            self._kick_scheduled = True
            self._loop.call_soon(self._kick)

    def _arm(self, wait: float) -> None:
        # The due time is kept here, not read back from the handle: uvloop rounds delays to
        # whole milliseconds and returns a plain Handle, which has no ``when()``, for a delay
        # that rounds to 0 (a wait under 0.5 ms, common under load).
        when = self._loop.time() + wait
        if self._timer is not None:
            if self._timer_when <= when:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timer)
        self._timer_when = when

    def _on_timer(self) -> None:
        self._timer = None
        self._kick()

    def _idle(self) -> bool:
        return self.dispatch_when_idle and self._in_flight == 0

    def _dispatch(self, batch: list[_Entry[T]]) -> None:
        self._in_flight += 1
        dispatched = time.monotonic()
        size = sum(e.size for e in batch)
        work = self._executor.submit(self._run_batch, [e.item for e in batch])
        work.add_done_callback(lambda w: self._from_thread(batch, size, w, dispatched))
        metrics = self._metrics
        metrics.batch_size.observe(size)
        tally, queued = metrics.tally, metrics.queue_duration
        for e in batch:
            tally.observe(queued, dispatched - e.arrival)

    def _from_thread(self, batch: list[_Entry[T]], size: int, work: Future, dispatched: float) -> None:
        try:
            self._loop.call_soon_threadsafe(self._finished, batch, size, work, dispatched)
        except RuntimeError:  # the event loop is closed: nobody is waiting for these answers
            pass

    def _finished(self, batch: list[_Entry[T]], size: int, work: Future, dispatched: float) -> None:
        """On the loop: the next batch goes to the runtime first, then this one's answers,
        delivered even if dispatching the next one raised (a bug there once lost a batch's
        answers: they waited out request_timeout_s). The error still reaches the loop's handler."""
        self._in_flight -= 1
        try:
            self._kick()
        finally:
            self._deliver(batch, size, work, dispatched)

    def _deliver(self, batch: list[_Entry[T]], size: int, work: Future, dispatched: float) -> None:
        elapsed = time.monotonic() - dispatched
        if work.cancelled():
            failure: BaseException | None = ShuttingDown("server shut down before this request ran")
        elif (exc := work.exception()) is not None:
            log.error("batch of %d sequences failed on model %s", size, self.name, exc_info=exc)
            failure = InferenceFailed(f"inference failed on model '{self.name}': {exc}")
        else:
            failure = None
        if failure is not None:
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(failure)
        else:
            for e, r in zip(batch, work.result(), strict=True):
                if not e.future.done():
                    e.future.set_result(Completed(r, size, dispatched - e.arrival, elapsed))
        if self._settled is not None and not self._queue and not self._in_flight:
            self._settled.set()

    def _drop_cancelled(self) -> None:
        if any(e.future.done() for e in self._queue):
            kept = [e for e in self._queue if not e.future.done()]
            self._queue = kept
            self._set_queued(sum(e.size for e in kept))

    def _take(self) -> list[_Entry[T]]:
        """The next batch, as the selection policy picks it, out of the queue (``_kick`` has
        just dropped the cancelled entries)."""
        batch = self._policy.select(self._queue, self.max_batch_size)
        if len(batch) == len(self._queue):
            self._queue = []
        else:
            chosen = set(map(id, batch))
            self._queue = [e for e in self._queue if id(e) not in chosen]
        self._set_queued(self._queued - sum(e.size for e in batch))
        return batch

    def _set_queued(self, n: int) -> None:
        # inc/dec, not set: several loaded versions of one model share the {model} gauge.
        self._metrics.tally.add(self._metrics.queue_depth, n - self._queued)
        self._queued = n

    # -- shutdown ----------------------------------------------------------------------------
    async def drain(self, timeout_s: float) -> None:
        """Refuse new work, answer everything queued and in flight, then stop."""
        self._closing = True
        if self._loop is not None:
            self._settled = asyncio.Event()
            self._kick()  # closing: whatever waits goes now, delay or not
            try:
                await asyncio.wait_for(self._wait_settled(), timeout_s)
            except TimeoutError:
                log.error("model %s: drain timed out with %d sequences queued", self.name, self._queued)
                for e in self._queue:
                    if not e.future.done():
                        e.future.set_exception(ShuttingDown("server shut down before this request ran"))
            if self._timer is not None:
                self._timer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _wait_settled(self) -> None:
        assert self._settled is not None
        while self._queue or self._in_flight:
            self._settled.clear()
            await self._settled.wait()
