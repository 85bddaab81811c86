"""Connections handed to HTTP workers: the supervisor accepts, each worker serves what it is given.

Why not let the kernel spread them (one SO_REUSEPORT socket per worker, as before): it picks a
worker by a hash of the client's address, so 32 connections from one client split 17/15 in one
run and 23/9 or 25/7 in others (bench/results/overhead-issue22-round*.md), and the worker with
25 is the bottleneck while the other idles. One shared socket was worse (26/6: whichever worker
woke first took the burst). Here one thread of the supervisor accepts every connection and
passes its descriptor (``SCM_RIGHTS`` over a Unix socket pair per worker) to the worker with the
fewest connections: those open (the shared count ``connections.OpenConnections`` keeps) plus
those handed and not yet acknowledged (a worker whose loop is busy when a burst arrives would
otherwise look empty and take it all: 21/11 in a first try), taking turns among those within
one of the fewest. It costs one hop per *connection*, none per request.

The worker adopts each descriptor on its event loop with ``loop.connect_accepted_socket`` and
uvicorn's own protocol, so a handed connection is served exactly as an accepted one (limits,
slow-client deadlines, drain), and acknowledges it as it counts it open (``acknowledge``). A
worker that stops (drain, death) closes its end; the acceptor then gives its share to the
others, and a replaced worker gets a new pair.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger("lstm_serve.supervisor")

_TOKEN = b"c"  # one byte with each descriptor (a descriptor cannot travel without data)
_ACK = b"a"  # worker -> acceptor, one byte each: a handed connection is now in the worker's open count


def channel() -> tuple[socket.socket, socket.socket]:
    """A (supervisor end, worker end) pair for one worker. A stream: a datagram or seqpacket
    pair holds only ``net.unix.max_dgram_qlen`` unread messages (10 by default), so a worker
    still starting would refuse its share of a burst, and acknowledgements would be dropped."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


class Acceptor:
    """Accepts on ``sock`` in a thread and hands each connection to a worker's channel."""

    def __init__(self, sock: socket.socket, open_connections: Sequence[int]) -> None:
        self._sock = sock
        self._open = open_connections  # per worker index, kept by the workers (shared memory)
        self._channels: list[socket.socket | None] = [None] * len(open_connections)
        # Handed but not yet acknowledged (not yet in the worker's open count): a worker whose
        # loop is slow to take its connections would otherwise look empty and get the burst.
        self._pending = [0] * len(open_connections)
        self._lock = threading.Lock()
        self._turn = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="acceptor", daemon=True)

    def attach(self, index: int, end: socket.socket) -> None:
        """Worker ``index`` (new or replacing a dead one) listens on the other end of ``end``."""
        end.setblocking(False)
        with self._lock:
            old, self._channels[index] = self._channels[index], end
            self._pending[index] = 0
        if old is not None:
            old.close()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Accept no more (new connections are refused from now on); the workers keep theirs."""
        self._stopping = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        if self._thread.ident is not None:
            self._thread.join(5)
        with self._lock:
            for i, end in enumerate(self._channels):
                if end is not None:
                    end.close()
                    self._channels[i] = None

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError as exc:
                if self._stopping:
                    return
                # Out of descriptors (EMFILE) or a connection reset while queued: the one that
                # waits is accepted once there is room again; never stop accepting for it.
                log.error("cannot accept a connection: %s; retrying", exc)
                time.sleep(0.1)
                continue
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if not self._hand(conn):
                    log.error("no HTTP worker could take a connection; closing it")
            except OSError:
                pass  # the client went away meanwhile
            finally:
                conn.close()  # the worker holds its own descriptor now

    def _hand(self, conn: socket.socket) -> bool:
        with self._lock:
            self._read_acks()
            for i in self._order():
                end = self._channels[i]
                if end is None:
                    continue
                try:
                    socket.send_fds(end, [_TOKEN], [conn.fileno()])
                except OSError:  # the worker is gone (or not reading): the next one
                    continue
                self._pending[i] += 1
                self._turn = i + 1
                return True
        return False

    def _read_acks(self) -> None:
        for i, end in enumerate(self._channels):
            while end is not None:
                try:
                    acks = end.recv(4096)
                except OSError:  # none waiting (EAGAIN), or the worker is gone
                    break
                if not acks:  # the worker is gone; its replacement starts from zero
                    break
                self._pending[i] = max(0, self._pending[i] - len(acks))

    def _order(self) -> list[int]:
        """Workers by connections (open, plus handed and not yet counted), counting any within
        one of the fewest as equal, in turn from the one after the last chosen."""
        n = len(self._channels)
        load = [self._open[i] + self._pending[i] for i in range(n)]
        fewest = min(load)
        return sorted(range(n), key=lambda i: (load[i] > fewest + 1, (i - self._turn) % n))


def acknowledge(end: socket.socket) -> Callable[[], None]:
    """What a worker calls right after it counts a connection open (``connections.OpenConnections``):
    tells the acceptor that one of its hand-offs is now in the shared count. Sent from the same
    statement that counts, so the acceptor never sees a connection in both or in neither for more
    than a moment (acknowledging when the adoption task finished, a loop turn later, let a burst
    split 20/12 on a loaded machine)."""

    def ack() -> None:
        if end.fileno() != -1:
            try:
                end.send(_ACK, socket.MSG_DONTWAIT)
            except OSError:  # the acceptor is gone or stopping: nobody needs the count
                pass

    return ack


def receive(end: socket.socket, protocol_factory: Callable[[], asyncio.Protocol]) -> Callable[[], None]:
    """On the running loop: serve every connection that arrives on ``end`` with
    ``protocol_factory``; returns the function that stops receiving (and closes ``end``)."""
    loop = asyncio.get_running_loop()
    end.setblocking(False)
    tasks: set[asyncio.Task] = set()

    def readable() -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(end, 16, 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                stop()
                return
            if not data and not fds:  # the supervisor closed its end
                stop()
                return
            for fd in fds:
                sock = socket.socket(fileno=fd)
                sock.setblocking(False)
                task = loop.create_task(loop.connect_accepted_socket(protocol_factory, sock))
                tasks.add(task)  # a reference until it is done
                task.add_done_callback(settled)

    def settled(task: asyncio.Task) -> None:
        tasks.discard(task)
        # A connection reset before it was served: the transport has closed its socket (closing
        # it here too could close a descriptor number already reused by another connection).
        if not task.cancelled() and task.exception() is not None:
            log.debug("a handed connection could not be served", exc_info=task.exception())

    def stop() -> None:
        if end.fileno() != -1:
            loop.remove_reader(end.fileno())
            end.close()

    loop.add_reader(end.fileno(), readable)
    return stop
