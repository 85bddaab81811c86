"""Server-kept LSTM state: live sequences, their chunks strictly in arrival order, eviction.

A long sequence arrives in chunks (Triton's ``sequence_id`` / ``sequence_start`` /
``sequence_end``). The engine keeps each live sequence's ``(h, c)``, feeds it as
``initial_h``/``initial_c`` to the next chunk and stores the chunk's ``final_h``/``final_c``;
the padding-aware contract makes chunk by chunk equal to the whole sequence at once.

Ordering lives here, not in batch selection: only the oldest chunk of a sequence is ever in a
batcher's queue, the next one is queued the moment it finishes. So a sequence's chunks run in
arrival order and never share a batch, while chunks of *different* sequences batch together
like any other requests (their state rows stacked on the batch axis). A chunk that arrives
while its predecessor is queued or running waits; it is never refused as busy.

A sequence stays on the version it started on; ``sequence_start`` on a live id restarts it
from zero state after the chunks already queued. A sequence idle for ``sequence_idle_timeout_s``
(counted from the end of its last chunk; never while a chunk is queued or running) is evicted
by a sweep once a second. Ended and evicted ids are remembered (bounded) to answer 409, not 404.

A chunk whose caller gave up (504) after it reached the batcher still runs and advances the
state, as every accepted chunk does; a chunk still waiting behind its predecessor is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from app import contract
from app.engine.batcher import Batcher, Completed
from app.config import Settings
from app.v2.errors import InvalidInput, SequenceEnded, ServingError, ShuttingDown, TooManySequences, UnknownSequence
from app.metrics import Metrics
from app.v2.sequences import Job, Sequences

Key = tuple[str, type, Any]
_REMEMBERED = 100_000  # ended or evicted ids kept to answer 409 rather than 404
STATE_OUTPUTS = (contract.FINAL_H, contract.FINAL_C)


@dataclass(eq=False)
class _Chunk:
    job: Job
    future: asyncio.Future
    arrival: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Stream:
    version: int
    h: np.ndarray | None = None
    c: np.ndarray | None = None
    chunks: deque[_Chunk] = field(default_factory=deque)
    idle_since: float = field(default_factory=time.monotonic)
    ended: bool = False  # its end chunk is accepted: later chunks need sequence_start


class Streams:
    def __init__(self, settings: Settings, metrics: Metrics, batcher: Callable[[str, int], Batcher]) -> None:
        self.idle_timeout_s = settings.sequence_idle_timeout_s
        self.max_live = settings.max_live_sequences
        self._metrics = metrics
        self._batcher = batcher
        self.live: dict[Key, _Stream] = {}
        self._gone: OrderedDict[Key, str] = OrderedDict()
        self._closing = False
        # With per-worker engines a sequence's next chunk may reach another worker, which would
        # not know it: refuse server-kept state there rather than answer from the wrong state.
        self._refused = settings.workers > 1 and settings.engine == "per_worker"

    # -- accepting chunks --------------------------------------------------------------------
    def enqueue(self, job: Job) -> asyncio.Future:
        """Accept a chunk; the future resolves to its Completed once it ran, after every chunk
        of its sequence that arrived before it."""
        ctl = job.stream
        assert ctl is not None
        if self._refused:
            raise InvalidInput("server-kept state (sequence_id) needs engine=shared or workers=1: with "
                               "engine=per_worker a sequence's chunks may reach different workers; carry "
                               "the state in the client (initial_h/final_h) instead")
        if self._closing:
            raise ShuttingDown("server is shutting down; retry on another replica")
        key: Key = (job.model, *ctl.key)
        st = self.live.get(key)
        if st is None:
            if not ctl.start:
                if key in self._gone:
                    raise SequenceEnded(f"sequence_id {ctl.shown} of model '{job.model}' {self._gone[key]}; "
                                        "send sequence_start=true to begin it again")
                raise UnknownSequence(f"sequence_id {ctl.shown} was never started on model '{job.model}'; "
                                      "send its first chunk with sequence_start=true")
            if len(self.live) >= self.max_live:
                raise TooManySequences(f"max_live_sequences ({self.max_live}) sequences are live; "
                                       f"sequence_id {ctl.shown} cannot start until one ends or is evicted")
            st = self.live[key] = _Stream(job.version)
            self._gone.pop(key, None)
            self._metrics.live_sequences.labels(job.model).inc()
        elif st.ended and not ctl.start:
            raise SequenceEnded(f"sequence_id {ctl.shown} of model '{job.model}' has ended (sequence_end); "
                                "send sequence_start=true to begin it again")
        st.ended = ctl.end
        chunk = _Chunk(job, asyncio.get_running_loop().create_future())
        st.chunks.append(chunk)
        if len(st.chunks) == 1:
            self._dispatch(key, st)
        return chunk.future

    def cancel(self, job: Job, future: asyncio.Future) -> None:
        """The caller gave up: a chunk still waiting behind its predecessor is dropped; one
        already in a batcher runs (the sequence's state must not skip it)."""
        assert job.stream is not None
        st = self.live.get((job.model, *job.stream.key))
        if not future.done():
            future.cancel()
        if st is not None:
            for chunk in list(st.chunks)[1:]:
                if chunk.future is future:
                    st.chunks.remove(chunk)

    # -- running them in order ---------------------------------------------------------------
    def _dispatch(self, key: Key, st: _Stream) -> None:
        """Put the sequence's oldest chunk into its version's batcher, with the kept state."""
        while st.chunks:
            chunk = st.chunks[0]
            job = chunk.job
            assert job.stream is not None
            if job.stream.start:
                st.h = st.c = None  # a fresh start (or a restart) runs from zero state
                st.version = job.version
            seqs = Sequences(job.sequences.x, job.sequences.lengths, st.h, st.c)
            inner = Job(job.model, st.version, seqs, tuple(dict.fromkeys((*job.outputs, *STATE_OUTPUTS))))
            try:
                future = self._batcher(job.model, st.version).enqueue(inner, 1, seqs.t)
            except ServingError as exc:
                st.chunks.popleft()
                if not chunk.future.done():
                    chunk.future.set_exception(exc)
                continue
            future.add_done_callback(partial(self._finished, key, st, chunk, time.monotonic()))
            return
        self._settle(key, st)

    def _finished(self, key: Key, st: _Stream, chunk: _Chunk, queued: float, future: asyncio.Future) -> None:
        st.chunks.popleft()
        st.idle_since = time.monotonic()
        if future.cancelled():
            failure: BaseException | None = ShuttingDown("server shut down before this chunk ran")
        else:
            failure = future.exception()
        if failure is None:
            done: Completed = future.result()
            st.h, st.c = done.result[contract.FINAL_H].copy(), done.result[contract.FINAL_C].copy()  # not views of the batch
            if not chunk.future.done():
                outputs = {n: done.result[n] for n in chunk.job.outputs}
                held = queued - chunk.arrival  # waiting behind the chunk before it
                chunk.future.set_result(Completed(outputs, done.batch_size, held + done.queue_s, done.inference_s))
        elif not chunk.future.done():
            chunk.future.set_exception(failure)
        self._dispatch(key, st)

    def _settle(self, key: Key, st: _Stream) -> None:
        """Nothing queued: a sequence whose last chunk ended it is gone."""
        if st.ended and self.live.get(key) is st:
            self._forget(key, "has ended (sequence_end)")

    def _forget(self, key: Key, why: str) -> None:
        del self.live[key]
        self._metrics.live_sequences.labels(key[0]).dec()
        self._gone[key] = why
        while len(self._gone) > _REMEMBERED:
            self._gone.popitem(last=False)

    # -- eviction and shutdown ---------------------------------------------------------------
    def evict_idle(self) -> int:
        """Evict sequences idle past the timeout (none with a chunk queued or running)."""
        now = time.monotonic()
        stale = [k for k, st in self.live.items() if not st.chunks and now - st.idle_since >= self.idle_timeout_s]
        for key in stale:
            self._forget(key, f"was evicted after {self.idle_timeout_s:g} s idle (sequence_idle_timeout_s)")
            self._metrics.sequences_evicted.labels(key[0]).inc()
        return len(stale)

    async def sweep(self, period_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(period_s)
            self.evict_idle()

    @property
    def busy(self) -> bool:
        return any(st.chunks for st in self.live.values())

    async def close(self, timeout_s: float) -> None:
        """Refuse new chunks; let every accepted chunk run (they enter batchers one by one)."""
        self._closing = True
        deadline = time.monotonic() + timeout_s
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
