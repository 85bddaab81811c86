"""The engine as an HTTP worker sees it when the engine runs in its own process.

Speaks the same :class:`engine.Engine` interface as the in-process engine, over one ``wire``
link per worker. What a worker must answer without a round trip (model lookup, readiness,
admission) it answers from state the engine pushes: the catalog on connect and after every
lifecycle change, readiness when it changes, and each version's queue depth with every answer.

A new catalog replaces the old one at once; the worker then acknowledges it (``CATALOG_ACK``)
once none of its requests holds a version the catalog dropped, so the engine drains that
version only after every worker's last request for it is queued. Acknowledgements go out in
publication order.

If the engine process goes away, every waiting request is answered at once with 503
(``EngineUnavailable``), readiness turns false and new requests are refused; the supervisor
then stops the pod's processes so that Kubernetes restarts it. No request waits for its
client's timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
from typing import Any

from app.processes import wire
from app.engine.batcher import Completed
from app.engine.catalog import Catalog, ModelInfo, catalog_from_wire, versions_of
from app.engine.engine import Engine
from app.v2.errors import EngineUnavailable, QueueFull, rebuild
from app.v2.sequences import Job

log = logging.getLogger("lstm_serve.remote")


class RemoteEngine(Engine):
    def __init__(self, address: str, connect_timeout_s: float = 60.0, drain_timeout_s: float = 20.0) -> None:
        super().__init__()
        self._drain_timeout_s = drain_timeout_s
        self._acks: asyncio.Task | None = None
        self._address = address
        self._connect_timeout_s = connect_timeout_s
        self._link: wire.Link | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._catalog: dict[str, dict[int, ModelInfo]] = {}
        self._engine_ready = False
        self._depth: dict[tuple[str, int], int] = {}
        self._connected: asyncio.Event | None = None
        self.lost = False

    # -- connection --------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._connected = asyncio.Event()
        deadline = loop.time() + self._connect_timeout_s
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self._address)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if loop.time() > deadline:
                    raise EngineUnavailable("cannot reach the engine process") from None
                await asyncio.sleep(0.05)
        sock.setblocking(False)
        _, self._link = await loop.create_unix_connection(lambda: wire.Link(self._on_message, self._on_lost), sock=sock)
        self._link.send(wire.frame({"t": wire.HELLO, "pid": os.getpid()}))
        await asyncio.wait_for(self._connected.wait(), self._connect_timeout_s)

    async def close(self, timeout_s: float) -> None:
        # The engine drains itself once every worker has stopped; a worker only lets go.
        if self._link is not None:
            self._link.close()

    def _on_message(self, link: wire.Link, h: dict[str, Any], payload: bytes) -> None:
        kind = h["t"]
        if kind == wire.RESULT:
            fut = self._pending.pop(h["i"], None)
            self._depth[(h["m"], h["v"])] = h["d"]
            if fut is not None and not fut.done():
                outputs = dict(zip(h["o"], wire.arrays(h, payload), strict=True))
                fut.set_result(Completed(outputs, h["b"], h["q"], h["f"]))
        elif kind in (wire.ERROR, wire.REPLY):
            fut = self._pending.pop(h["i"], None)
            if "d" in h:
                self._depth[(h["m"], h["v"])] = h["d"]
            if fut is not None and not fut.done():
                if "k" in h:
                    fut.set_exception(rebuild(h["k"], h["msg"], h["h"]))
                else:
                    fut.set_result(h["r"])
        elif kind == wire.STATUS:
            self._engine_ready = h["ready"]
        elif kind == wire.CATALOG:
            old = self._catalog
            self._catalog = catalog_from_wire(h["models"])
            leaving = versions_of(old) - versions_of(self._catalog)
            self._acks = asyncio.get_running_loop().create_task(self._ack(self._acks, leaving, h["n"]))
            assert self._connected is not None
            self._connected.set()

    async def _ack(self, previous: asyncio.Task | None, leaving: set[tuple[str, int]], n: int) -> None:
        if previous is not None:
            await previous
        if leaving:
            await self.released(leaving, self._drain_timeout_s)
        if self._link is not None and not self._link.closed:
            self._link.send(wire.frame({"t": wire.CATALOG_ACK, "n": n}))

    def _on_lost(self, link: wire.Link, exc: Exception | None) -> None:
        self.lost = True
        if self._pending:
            log.error("engine process is gone; answering %d waiting requests with 503", len(self._pending))
        gone = EngineUnavailable("the engine process is gone; retry on another replica")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(gone)
        self._pending.clear()

    # -- the interface -----------------------------------------------------------------------
    def catalog(self) -> Catalog:
        return self._catalog

    @property
    def ready(self) -> bool:
        return self._engine_ready and not self.lost

    def _check_link(self) -> wire.Link:
        if self.lost or self._link is None:
            raise EngineUnavailable("the engine process is gone; retry on another replica")
        return self._link

    def admit(self, model: ModelInfo, size: int = 1) -> None:
        self._check_link()
        queued = self._depth.get((model.name, model.version), 0)
        if queued + size > model.max_queue_size:
            raise QueueFull(
                f"model '{model.name}' queue is full ({queued} of {model.max_queue_size} sequences "
                "waiting); retry later"
            )

    async def submit(self, job: Job) -> Completed[dict[str, Any]]:
        s = job.sequences
        arrays = [s.x, s.lengths]
        if s.initial_h is not None and s.initial_c is not None:
            arrays += [s.initial_h, s.initial_c]
        header = {"t": wire.SUBMIT, "m": job.model, "v": job.version, "o": list(job.outputs)}
        if job.stream is not None:
            header["q"] = [job.stream.id, job.stream.start, job.stream.end]
        return await self._ask(header, arrays)

    async def stats(self, models: list[ModelInfo]) -> list[dict[str, Any]]:
        return await self.call("stats", models=[[m.name, m.version] for m in models])

    async def call(self, op: str, **args: Any) -> Any:
        """A control call (index, load, unload), answered by the engine's loop."""
        return await self._ask({"t": wire.CALL, "op": op, "args": args})

    async def index(self) -> list[dict[str, str]]:
        return await self.call("index")

    async def load(self, name: str) -> None:
        await self.call("load", name=name)

    async def unload(self, name: str) -> None:
        await self.call("unload", name=name)

    async def _ask(self, header: dict[str, Any], arrays: list | None = None) -> Any:
        link = self._check_link()
        i = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[i] = fut
        header["i"] = i
        link.send(wire.frame(header, arrays or ()))
        try:
            return await fut
        finally:
            if not fut.done() or fut.cancelled():  # our caller gave up (timeout): unqueue it
                self._pending.pop(i, None)
                if header["t"] == wire.SUBMIT and not link.closed:
                    link.send(wire.frame({"t": wire.CANCEL, "i": i}))
