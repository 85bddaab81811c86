"""The worker-engine wire format: arrays cross as raw bytes (no pickle), frames survive any
split of the byte stream, and the frames of one loop turn leave in one write."""

from __future__ import annotations

import asyncio

import numpy as np

from app.processes import wire


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True


def test_arrays_round_trip_without_pickle_at_any_split() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 4)).astype(np.float32)
    lengths = np.array([7, 2, 5], np.int32)
    h = rng.standard_normal((2, 3, 5)).astype(np.float32)[:, ::2]  # not contiguous
    stream = b"".join(bytes(p) for p in wire.frame({"t": wire.SUBMIT, "i": 1}, [x, lengths, h]))
    stream += b"".join(bytes(p) for p in wire.frame({"t": wire.CANCEL, "i": 2}))
    assert b"numpy" not in stream and b"\x80\x04" not in stream  # no pickle protocol marker
    for cut in (1, 7, 8, 9, 50, len(stream) - 1):
        got: list[tuple[dict, list[np.ndarray]]] = []
        link = wire.Link(lambda _l, h, p: got.append((h, wire.arrays(h, p))), lambda _l, _e: None)
        link.data_received(stream[:cut])
        link.data_received(stream[cut:])
        assert [h["i"] for h, _ in got] == [1, 2]
        (head, arrs), (_, none) = got
        np.testing.assert_array_equal(arrs[0], x)
        np.testing.assert_array_equal(arrs[1], lengths)
        np.testing.assert_array_equal(arrs[2], h)
        assert arrs[1].dtype == np.int32 and none == []


def test_frames_of_one_loop_turn_leave_in_one_write() -> None:
    async def go() -> Transport:
        t = Transport()
        link = wire.Link(lambda *_: None, lambda *_: None)
        link.connection_made(t)  # type: ignore[arg-type]
        for i in range(5):
            link.send(wire.frame({"t": wire.STATUS, "i": i}))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return t

    t = asyncio.run(go())
    assert len(t.writes) == 1
    got: list[int] = []
    wire.Link(lambda _l, h, _p: got.append(h["i"]), lambda *_: None).data_received(t.writes[0])
    assert got == [0, 1, 2, 3, 4]


def test_a_corrupt_length_closes_the_link() -> None:
    t = Transport()
    link = wire.Link(lambda *_: None, lambda *_: None)
    link.connection_made(t)  # type: ignore[arg-type]
    link.data_received(wire.PREFIX.pack(0xFFFFFFFF, 0xFFFFFFFF))
    assert t.closed
