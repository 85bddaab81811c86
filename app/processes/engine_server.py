"""The engine process: every ONNX Runtime session and batcher, serving the HTTP workers.

It runs one :class:`engine.LocalEngine` and answers each worker's ``wire`` link: a submitted
job goes straight into its version's batcher (no task per request; the batcher's future calls
back), and the answers of one batch leave in one write per worker. Batches therefore form
across all workers, and there is one copy of each model and one CUDA context per pod.

Readiness, pushed to every worker when it changes: models loaded and warm, not draining, and
as many workers connected as configured. A worker whose link drops (it died) has its queued
jobs taken off the queues at once.

Lifecycle changes (``lifecycle``, through ``LocalEngine.listeners``): each new catalog goes to
every worker, numbered; the change completes once every connected worker has acknowledged it
(none of its requests still holds a version that left), bounded by the drain timeout. Only
then do the versions that left drain and close, so a request that chose a version just before
a swap is still answered by it.

Started and stopped by ``supervisor``: SIGTERM arrives only after every worker has drained,
so the engine answers what is left and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from app import logs
from app import startup
from app.processes import wire
from app.engine.catalog import Catalog, catalog_to_wire
from app.config import Settings
from app.engine.engine import LocalEngine
from app.v2.errors import InferenceFailed, ServingError
from app.metrics import Metrics
from app.v2.sequences import Job, Sequences, StreamControl

log = logging.getLogger("lstm_serve.engine")


class EngineServer:
    def __init__(self, engine: LocalEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.workers: dict[wire.Link, dict[int, tuple[Job, asyncio.Future]]] = {}
        self.draining = False
        self._ready_sent: bool | None = None
        self._calls: set[asyncio.Task] = set()  # control calls running (a task needs a reference)
        self.published = 0  # number of the catalog the workers were last sent
        self.acked: dict[wire.Link, int] = {}
        self._acks_changed = asyncio.Event()
        engine.listeners.append(self.broadcast)

    def link(self) -> wire.Link:
        return wire.Link(self._on_message, self._on_lost)

    # -- readiness ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.engine.ready and not self.draining and len(self.workers) >= self.settings.workers

    def _status_changed(self) -> None:
        ready = self.ready
        if ready != self._ready_sent:
            self._ready_sent = ready
            frame = wire.frame({"t": wire.STATUS, "ready": ready})
            for link in self.workers:
                link.send(frame)
            log.info("engine readiness", extra={"ready": ready, "workers": len(self.workers)})

    # -- messages ----------------------------------------------------------------------------
    def _on_message(self, link: wire.Link, h: dict[str, Any], payload: bytes) -> None:
        kind = h["t"]
        if kind == wire.SUBMIT:
            self._submit(link, h, payload)
        elif kind == wire.CANCEL:
            entry = self.workers.get(link, {}).pop(h["i"], None)
            if entry is not None:
                self.engine.cancel(*entry)
        elif kind == wire.CATALOG_ACK:
            self.acked[link] = h["n"]
            self._acks_changed.set()
        elif kind == wire.HELLO:
            link.peer = h
            self.workers[link] = {}
            self.acked[link] = self.published
            link.send(wire.frame({"t": wire.CATALOG, "models": catalog_to_wire(self.engine.catalog()),
                                  "n": self.published}))
            link.send(wire.frame({"t": wire.STATUS, "ready": self.ready}))
            self._status_changed()
        elif kind == wire.CALL:
            task = asyncio.get_running_loop().create_task(self._call(link, h))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    def _submit(self, link: wire.Link, h: dict[str, Any], payload: bytes) -> None:
        x, lengths, *state = wire.arrays(h, payload)
        stream = StreamControl(*h["q"]) if "q" in h else None
        job = Job(h["m"], h["v"], Sequences(x, lengths, *state), tuple(h["o"]), stream)
        try:
            fut = self.engine.enqueue(job)
        except ServingError as exc:
            link.send(wire.frame(self._error(h["i"], exc, job)))
            return
        self.workers[link][h["i"]] = (job, fut)
        fut.add_done_callback(partial(self._done, link, h["i"], job))

    def _done(self, link: wire.Link, i: int, job: Job, fut: asyncio.Future) -> None:
        pending = self.workers.get(link)
        if pending is not None:
            pending.pop(i, None)
        if pending is None or fut.cancelled():  # the worker is gone, or gave up on this job
            return
        exc = fut.exception()
        if exc is not None:
            link.send(wire.frame(self._error(i, exc, job)))
            return
        done = fut.result()
        names = list(done.result)
        header = {"t": wire.RESULT, "i": i, "b": done.batch_size, "q": done.queue_s, "f": done.inference_s,
                  "m": job.model, "v": job.version, "d": self.engine.queued(job.model, job.version), "o": names}
        link.send(wire.frame(header, [done.result[n] for n in names]))

    def _error(self, i: int, exc: BaseException, job: Job | None = None) -> dict[str, Any]:
        if not isinstance(exc, ServingError):
            log.error("unexpected engine error", exc_info=exc)
            exc = InferenceFailed(f"inference failed: {type(exc).__name__}")
        header: dict[str, Any] = {"t": wire.ERROR, "i": i, "k": type(exc).__name__, "msg": exc.message, "h": exc.headers}
        if job is not None:
            try:
                header.update(m=job.model, v=job.version, d=self.engine.queued(job.model, job.version))
            except ServingError:
                pass
        return header

    async def _call(self, link: wire.Link, h: dict[str, Any]) -> None:
        try:
            result = await self.engine.control(h["op"], **h.get("args", {}))
        except Exception as exc:
            link.send(wire.frame({**self._error(h["i"], exc), "t": wire.REPLY}))
            return
        link.send(wire.frame({"t": wire.REPLY, "i": h["i"], "r": result}))

    async def broadcast(self, catalog: Catalog, leaving: set[tuple[str, int]]) -> None:
        """Send a new catalog to every worker; return once each acknowledged it (or is gone)."""
        self.published += 1
        n = self.published
        message = {"t": wire.CATALOG, "models": catalog_to_wire(catalog), "n": n}
        for link in self.workers:
            link.send(wire.frame(dict(message)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout_s
        while any(self.acked.get(link, n) < n for link in self.workers):
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("workers did not acknowledge catalog %d in %.1f s", n, self.settings.drain_timeout_s)
                return
            self._acks_changed.clear()
            try:
                await asyncio.wait_for(self._acks_changed.wait(), remaining)
            except TimeoutError:
                pass

    def _on_lost(self, link: wire.Link, exc: Exception | None) -> None:
        self.acked.pop(link, None)
        self._acks_changed.set()
        pending = self.workers.pop(link, None)
        if pending is None:
            return
        if pending:
            log.warning("worker link lost; dropping its %d queued jobs", len(pending), extra={"worker": link.peer.get("pid")})
        for job, fut in pending.values():
            self.engine.cancel(job, fut)
        self._status_changed()


async def _main(settings: Settings, address: str, conn: Connection) -> int:
    metrics = Metrics(settings.max_batch_size)
    engine = LocalEngine(settings, metrics)
    try:
        await engine.start()
    except Exception as exc:  # the supervisor says it in one line (``startup``) and exits 1
        known = startup.message(exc)
        conn.send(("error", known[0] if known else f"{type(exc).__name__}: {exc}"))
        return 1
    server = EngineServer(engine, settings)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(address)
    sock.listen(256)
    loop = asyncio.get_running_loop()
    listener = await loop.create_unix_server(server.link, sock=sock)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    conn.send(("ready", {"models": {n: sorted(v) for n, v in engine.catalog().items()},
                         "providers": sorted(engine.providers())}))
    log.info("engine ready", extra={"models": {n: sorted(v) for n, v in engine.catalog().items()},
                                    "providers": sorted(engine.providers())})
    await stop.wait()
    # SIGTERM comes from the supervisor once the workers are gone, or to the whole process group
    # (Ctrl-C, `timeout`): then the workers are draining too, and still need the engine for the
    # requests they accepted. Serve them until they have let go, then drain and exit.
    server.draining = True
    server._status_changed()
    listener.close()
    deadline = loop.time() + settings.drain_timeout_s
    while server.workers and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await engine.close(max(0.0, deadline - loop.time()))
    for link in list(server.workers):
        link.close()
    log.info("engine drained; exiting")
    return 0


def run(settings: Settings, address: str, conn: Connection) -> int:
    """The engine process's entry: load, serve the workers until SIGTERM, drain, exit."""
    logs.setup(settings.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us in order
    try:
        import uvloop

        return uvloop.run(_main(settings, address, conn))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(_main(settings, address, conn))
