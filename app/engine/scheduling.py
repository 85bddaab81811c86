"""Batch selection: which queued requests go into the next batch.

A policy of its own, apart from queueing, timing and dispatch (``batcher``), so that another
rule (for example per-sequence ordering for server-kept state) replaces this one without
touching the batcher. A policy sees the queue oldest first and the room left in a batch, and
returns the entries to take; it never changes the queue itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Queued(Protocol):
    """What selection may look at: sequences in the request and its padded length."""

    @property
    def size(self) -> int: ...

    @property
    def length(self) -> int: ...


Q = TypeVar("Q", bound=Queued)


class Policy(Protocol):
    def select(self, queue: Sequence[Q], room: int) -> list[Q]:
        """Entries of ``queue`` (oldest first) for one batch of at most ``room`` sequences."""
        ...


class OldestClosestLength:
    """FIFO, then closest length: the oldest request always goes first (no starvation), and
    when more than a batch is waiting it is joined by the requests closest to it in length,
    since the LSTM runs every row to the longest one and padding is wasted compute."""

    def select(self, queue: Sequence[Q], room: int) -> list[Q]:
        if not queue:
            return []
        if sum(e.size for e in queue) <= room:
            return list(queue)
        oldest = queue[0]
        batch, left = [oldest], room - oldest.size
        for e in sorted(queue[1:], key=lambda e: abs(e.length - oldest.length)):
            if e.size <= left:
                batch.append(e)
                left -= e.size
                if left == 0:
                    break
        return batch
