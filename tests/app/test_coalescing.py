"""A response's head and body leave in one send (app.http.coalescing): counted in TCP segments
on a real connection to the real server, and the wrapper's rules on a real uvloop transport."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys

import orjson
import pytest
import uvloop

from app.http.coalescing import JOIN_LIMIT, CoalescingTransport
from tests.conftest import Server
from tests.rawhttp import read_response, request_bytes

# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, segments received that carried data (Linux >= 4.6).
_DATA_SEGS_IN = 152


def data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    if len(info) < _DATA_SEGS_IN + 4:
        pytest.skip("this kernel's TCP_INFO has no tcpi_data_segs_in (Linux >= 4.6)")
    return struct.unpack_from("I", info, _DATA_SEGS_IN)[0]


def exchanges(server: Server, request: bytes, n: int) -> tuple[list[int], int]:
    """``n`` requests on one connection, each sent once the last is answered: their statuses and
    the data segments the client received for all of them."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        statuses = [read_response(sock).status]  # the connection's first answer: warm
        before = data_segments_in(sock)
        for _ in range(n):
            sock.sendall(request)
            statuses.append(read_response(sock).status)
        return statuses, data_segments_in(sock) - before


@pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO's layout is Linux's")
@pytest.mark.parametrize("route", ["ready", "infer"])
def test_each_answer_reaches_the_client_in_one_segment(server: Server, route: str) -> None:
    if route == "ready":
        request = request_bytes("GET", b"/v2/health/ready")  # a FastAPI route
    else:  # the inference entry
        body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 4, 3], "datatype": "FP32",
                                         "data": [0.5] * 12}]})
        request = request_bytes("POST", b"/v2/models/uni/infer", {"Content-Type": "application/json"}, body)
    statuses, segments = exchanges(server, request, 20)
    assert statuses == [200] * 21
    # Head and body written separately arrive as two segments each: 40.
    assert segments == 20, f"20 answers arrived in {segments} data segments"


def split_responses(stream: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each Content-Length framed response in ``stream``, in order; the
    stream must end exactly after the last one."""
    out = []
    while stream:
        head, sep, rest = stream.partition(b"\r\n\r\n")
        assert sep, f"an incomplete response head: {stream[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        length = int(headers["content-length"])
        assert len(rest) >= length, f"a body cut short: {rest!r}"
        out.append((int(lines[0].split()[1]), rest[:length]))
        stream = rest[length:]
    return out


def test_pipelined_requests_are_answered_whole_and_in_order(server: Server) -> None:
    paths = [b"/v2/health/ready", b"/v2/models/uni", b"/v2/health/live", b"/v2/models/nope"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"".join(request_bytes("GET", p, {"Connection": "close"} if p == paths[-1] else None)
                              for p in paths))
        stream = b""
        while chunk := sock.recv(65536):  # to the end: the last request asked the server to close
            stream += chunk
    answers = split_responses(stream)
    assert [status for status, _ in answers] == [200, 200, 200, 404]
    assert orjson.loads(answers[1][1])["name"] == "uni"
    assert "nope" in orjson.loads(answers[3][1])["error"]


class _Peer:
    """The far end of a real socket pair: what it has received."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def received(self) -> bytes:
        self.sock.setblocking(False)
        out = b""
        try:
            while chunk := self.sock.recv(1 << 20):
                out += chunk
        except BlockingIOError:
            pass
        return out


class _Quiet(asyncio.Protocol):
    pass


async def _wrapped() -> tuple[CoalescingTransport, asyncio.Transport, _Peer]:
    here, there = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(_Quiet, here)
    return CoalescingTransport(transport, asyncio.get_running_loop()), transport, _Peer(there)


def run(coro_fn) -> None:  # type: ignore[no-untyped-def]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro_fn())


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n"


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_a_head_waits_for_its_body_and_leaves_with_it() -> None:
    async def go() -> None:
        wrapper, transport, peer = await _wrapped()
        wrapper.write(HEAD)
        assert peer.received() == b""  # held
        assert wrapper.get_write_buffer_size() == len(HEAD)
        wrapper.write(bytearray(b"body"))
        assert peer.received() == HEAD + b"body"  # at once, in one write
        wrapper.write(b"")
        wrapper.write(b"not a head")  # anything else goes straight through
        assert peer.received() == b"not a head"
        await settle()  # the turn's flush finds nothing held
        assert peer.received() == b""
        transport.close()

    run(go)


def test_a_head_without_a_body_in_its_turn_leaves_at_the_end_of_the_turn() -> None:
    async def go() -> None:
        wrapper, transport, peer = await _wrapped()
        wrapper.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await settle()
        assert peer.received() == b"HTTP/1.1 204 No Content\r\n\r\n"
        wrapper.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client waits for it: never held
        assert peer.received() == b"HTTP/1.1 100 Continue\r\n\r\n"
        transport.close()

    run(go)


def test_close_sends_a_held_head_and_abort_drops_it() -> None:
    async def go() -> None:
        wrapper, _, peer = await _wrapped()
        wrapper.write(HEAD)
        wrapper.close()
        assert wrapper.is_closing()
        await asyncio.sleep(0.05)
        assert peer.received() == HEAD

        wrapper, _, peer = await _wrapped()
        wrapper.write(HEAD)
        wrapper.abort()
        await asyncio.sleep(0.05)
        assert peer.received() == b""
        wrapper.flush()  # the turn's flush: nothing held, and a closed transport is not written to

    run(go)


def test_writes_after_the_connection_closed_are_dropped_not_raised() -> None:
    # uvloop raises on a closed socket's transport; answers to pipelined requests of a client
    # that left were written there, and each logged "Exception in ASGI application".
    async def go() -> None:
        wrapper, transport, peer = await _wrapped()
        peer.sock.close()
        transport.close()
        await asyncio.sleep(0.05)
        with pytest.raises(RuntimeError):
            transport.write(b"x")  # what the wrapper used to pass on
        wrapper.write(HEAD)
        wrapper.write(b"body")
        wrapper.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await settle()  # nothing held for the turn's flush either
        assert wrapper.get_write_buffer_size() == 0

    run(go)


def test_a_large_body_follows_its_head_without_being_joined_to_it() -> None:
    async def go() -> None:
        wrapper, transport, peer = await _wrapped()
        body = bytes(range(256)) * (JOIN_LIMIT // 256 + 1)
        wrapper.write(HEAD)
        wrapper.write(body)
        got = b""
        for _ in range(200):
            await asyncio.sleep(0.005)
            got += peer.received()
            if len(got) == len(HEAD) + len(body):
                break
        assert got == HEAD + body
        transport.close()

    run(go)
