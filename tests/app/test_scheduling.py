"""Batch selection on its own: the oldest request always goes first; with more than a batch
waiting it is joined by the requests closest to it in length, up to the batch's room, and no
batch spans more than the length ratio."""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.scheduling import OldestClosestLength


@dataclass
class Item:
    size: int
    length: int


def test_everything_goes_when_it_fits() -> None:
    q = [Item(2, 50), Item(3, 10), Item(1, 400)]
    assert OldestClosestLength(max_length_ratio=40).select(q, 6) == q


def test_a_short_request_never_rides_with_one_many_times_longer() -> None:
    upload, probe = Item(32, 31_250), Item(1, 5)
    policy = OldestClosestLength(max_length_ratio=8)
    assert policy.select([upload, probe], 64) == [upload]  # the probe takes the next batch
    assert policy.select([probe, upload], 64) == [probe]
    q = [Item(1, 50), Item(1, 400), Item(1, 7), Item(1, 401), Item(1, 6), Item(1, 90)]
    # closest to the oldest first (90, 7, 6, 400, 401), each only while the batch spans at most
    # 8x: 90 joins, 7 and 6 would stretch 50..90 past 8x, 400 is exactly 8x 50, 401 is past it
    assert policy.select(q, 64) == [q[0], q[5], q[1]]


def test_oldest_first_then_closest_length_within_the_room() -> None:
    q = [Item(2, 50), Item(3, 5), Item(2, 48), Item(1, 400), Item(2, 55), Item(1, 51)]
    got = OldestClosestLength().select(q, 5)
    assert got[0] is q[0]
    assert got == [q[0], q[5], q[2]]  # lengths 50, 51, 48: 5 sequences, the far ones wait
    assert sum(i.size for i in got) <= 5


def test_skips_what_does_not_fit_and_keeps_filling() -> None:
    q = [Item(3, 10), Item(4, 10), Item(1, 60)]
    assert OldestClosestLength().select(q, 4) == [q[0], q[2]]
    assert OldestClosestLength().select([], 4) == []
