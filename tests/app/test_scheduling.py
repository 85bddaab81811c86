"""Batch selection on its own: the oldest request always goes first; with more than a batch
waiting it is joined by the requests closest to it in length, up to the batch's room."""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.scheduling import OldestClosestLength


@dataclass
class Item:
    size: int
    length: int


def test_everything_goes_when_it_fits() -> None:
    q = [Item(2, 50), Item(3, 5), Item(1, 400)]
    assert OldestClosestLength().select(q, 6) == q


def test_oldest_first_then_closest_length_within_the_room() -> None:
    q = [Item(2, 50), Item(3, 5), Item(2, 48), Item(1, 400), Item(2, 55), Item(1, 51)]
    got = OldestClosestLength().select(q, 5)
    assert got[0] is q[0]
    assert got == [q[0], q[5], q[2]]  # lengths 50, 51, 48: 5 sequences, the far ones wait
    assert sum(i.size for i in got) <= 5


def test_skips_what_does_not_fit_and_keeps_filling() -> None:
    q = [Item(3, 10), Item(4, 10), Item(1, 90)]
    assert OldestClosestLength().select(q, 4) == [q[0], q[2]]
    assert OldestClosestLength().select([], 4) == []
