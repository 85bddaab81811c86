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
    since the LSTM runs every row to the longest one and padding is wasted compute.

    No batch spans more than ``max_length_ratio`` (longest / shortest): a short request never
    rides with one many times longer, where it would wait for the long one's every step (a
    5-step probe queued beside a 31,250-step upload was answered with it, 1.3-1.8 s later;
    bench/results/bigbody-issue22.md). Whoever is left out goes in the next batch.
    """

    def __init__(self, max_length_ratio: float = float("inf")) -> None:
        # No cap unless given one: the server's comes from Settings.max_length_ratio, defined there.
        self.max_length_ratio = max_length_ratio

    def select(self, queue: Sequence[Q], room: int) -> list[Q]:
        if not queue:
            return []
        oldest = queue[0]
        if sum(e.size for e in queue) <= room and self._fits(min(e.length for e in queue), max(e.length for e in queue)):
            return list(queue)
        batch, left = [oldest], room - oldest.size
        lo = hi = oldest.length
        for e in sorted(queue[1:], key=lambda e: abs(e.length - oldest.length)):
            if e.size <= left and self._fits(min(lo, e.length), max(hi, e.length)):
                batch.append(e)
                left -= e.size
                lo, hi = min(lo, e.length), max(hi, e.length)
                if left == 0:
                    break
        return batch

    def _fits(self, shortest: int, longest: int) -> bool:
        return longest <= self.max_length_ratio * max(shortest, 1)
