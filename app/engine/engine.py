"""The engine boundary: the one interface every front end (HTTP, gRPC) uses to reach models.

Front-end code (``app.http``, ``app.grpc``) looks models up, asks for admission and submits jobs; it
never touches a batcher, a session or the repository. Two implementations speak this
interface, in the manner of vLLM's engine-core client:

* :class:`LocalEngine`: the model lifecycle (``lifecycle``: repository, versions, states) and
  one batcher per model version in this process (``workers=1``, and every worker of
  ``engine=per_worker``);
* ``remote.RemoteEngine``: a client of the one engine process that owns every ONNX Runtime
  session and batcher (``engine=shared`` with several HTTP workers), so batches form across
  all workers. The engine process itself runs a :class:`LocalEngine` (``engine_server``).

Model lookup (the default version for unversioned requests, 404 and 503 rules) lives here
once, for both, and so do *holds*: a request holds the version it chose until it is answered,
so a version the lifecycle takes out of the catalog drains only once every request that chose
it before the swap has been queued (no 404 or 503 for a request that raced a swap). Load,
unload and the repository index are engine operations; a remote engine forwards them to the
engine process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

from app.engine.batcher import Completed
from app.engine.catalog import Catalog, ModelInfo
from app.engine.deadlines import Deadlines
from app.config import Settings
from app.v2.errors import InvalidInput, ModelNotFound, ModelNotReady, RequestTimeout, ShuttingDown
from app.engine.lifecycle import Key, Lifecycle
from app.metrics import Metrics
from app.engine.model import ServedModel
from app.v2.sequences import Job
from app.engine.streams import Streams

log = logging.getLogger("lstm_serve.engine")


class Engine(ABC):
    """Models, admission, batched inference and model lifecycle, wherever they run."""

    def __init__(self) -> None:
        self._holds: dict[Key, int] = {}
        self._let_go: asyncio.Event | None = None
        self._deadlines: Deadlines | None = None  # of the loop the engine serves in

    @abstractmethod
    async def start(self) -> None:
        """Load models (local) or connect to the engine process (remote)."""

    @abstractmethod
    async def close(self, timeout_s: float) -> None:
        """Answer everything accepted, then stop; bounded by ``timeout_s``."""

    @abstractmethod
    def catalog(self) -> Catalog:
        """Served models: name -> version -> info."""

    @property
    @abstractmethod
    def ready(self) -> bool:
        """Models are loaded and warm, and the engine (and, when remote, every worker) is up."""

    @abstractmethod
    def admit(self, model: ModelInfo, size: int = 1) -> None:
        """Refuse up front (QueueFull, ShuttingDown, Unavailable) before a body is decoded."""

    @abstractmethod
    async def submit(self, job: Job) -> Completed[dict[str, Any]]:
        """Queue ``job`` and wait for its outputs; cancelling the wait takes it off the queue."""

    async def submit_within(self, job: Job, timeout_s: float, why: str) -> Completed[dict[str, Any]]:
        """:meth:`submit` with a deadline, for every front end: past ``timeout_s`` the wait is
        cancelled, so the job's queued work is dropped, and RequestTimeout names ``why`` (the
        setting, or the client's own deadline)."""
        # What ``asyncio.timeout`` does, without a context manager or a timer per request
        # (``deadlines``): on expiry the waiting task is cancelled, which cancels the queued
        # job, and the cancellation is turned into RequestTimeout.
        task = asyncio.current_task()
        assert task is not None
        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not task.get_loop():
            deadlines = self._deadlines = Deadlines(task.get_loop())
        wait = deadlines.start(task, timeout_s)
        try:
            return await self.submit(job)
        except asyncio.CancelledError:
            if wait.expired and task.uncancel() == 0:  # ours, not a cancellation from outside
                raise RequestTimeout(f"request was not answered within {why}; its queued work was dropped") from None
            raise
        finally:
            deadlines.finish(wait)

    @abstractmethod
    async def stats(self, models: list[ModelInfo]) -> list[dict[str, Any]]:
        """Triton's statistics of these versions (``stats``), counted where their batches run."""

    @abstractmethod
    async def index(self) -> list[dict[str, str]]:
        """Every version in the repository: name, version, state, reason (``lifecycle``)."""

    @abstractmethod
    async def load(self, name: str) -> None:
        """Serve what ``name``'s settings select now; returns once it serves."""

    @abstractmethod
    async def unload(self, name: str) -> None:
        """Stop serving ``name``; returns once its queues drained."""

    def model(self, name: str, version: str | None = None) -> ModelInfo:
        """The version a request addresses: the model's default version unless ``version`` is
        given (the pinned ``default_version``, else the newest served)."""
        catalog = self.catalog()
        versions = catalog.get(name)
        if not versions:
            raise ModelNotFound(f"unknown model '{name}'; this server serves {sorted(catalog)}")
        if version is None:
            for info in versions.values():  # a loop, not ``next(genexpr)``: no generator a request
                if info.default:
                    break
            else:
                info = versions[max(versions)]
        else:
            if not version.isdigit() or int(version) not in versions:
                raise ModelNotFound(f"model '{name}' has no loaded version '{version}'; loaded: {sorted(versions)}")
            info = versions[int(version)]
        if not info.ready:
            raise ModelNotReady(f"model '{name}' version {info.version} is not ready")
        return info

    def providers(self) -> set[str]:
        return {i.provider for versions in self.catalog().values() for i in versions.values()}

    # -- holds: a version leaving the catalog serves the requests that chose it first ------------
    def hold(self, model: ModelInfo) -> None:
        """A request chose ``model`` (before its body is read); ``release`` when answered."""
        key = (model.name, model.version)
        self._holds[key] = self._holds.get(key, 0) + 1

    def release(self, model: ModelInfo) -> None:
        key = (model.name, model.version)
        n = self._holds[key] - 1
        if n:
            self._holds[key] = n
        else:
            del self._holds[key]
            if self._let_go is not None:
                self._let_go.set()

    async def released(self, versions: set[Key], timeout_s: float) -> None:
        """Wait until no request in this process holds any of ``versions`` (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while versions & self._holds.keys():
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("versions still held after %.1f s; retiring them anyway", timeout_s,
                            extra={"versions": sorted(versions & self._holds.keys())})
                return
            self._let_go = self._let_go or asyncio.Event()
            self._let_go.clear()
            try:
                await asyncio.wait_for(self._let_go.wait(), remaining)
            except TimeoutError:
                pass


class LocalEngine(Engine):
    """The model lifecycle and its batchers, in this process."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__()
        self.settings = settings
        self.lifecycle = Lifecycle(settings, metrics, self._published)
        self.streams = Streams(settings, metrics, lambda name, version: self._served(name, version).batcher)
        self._catalog: Catalog = {}
        self._closing = False
        self._started = False
        self._sweeper: asyncio.Task | None = None
        # Called after each publication (the engine process tells its workers, and waits until
        # none of them holds a version that left).
        self.listeners: list[Callable[[Catalog, set[Key]], Awaitable[None]]] = []

    async def start(self) -> None:
        await self.lifecycle.start()
        self._started = True
        self._sweeper = asyncio.create_task(self.streams.sweep(), name="evict-idle-sequences")

    async def _published(self, catalog: Catalog, leaving: set[Key]) -> None:
        self._catalog = catalog
        if leaving:
            await self.released(leaving, self.settings.drain_timeout_s)
        for listener in self.listeners:
            await listener(catalog, leaving)

    def catalog(self) -> Catalog:
        return self._catalog

    @property
    def ready(self) -> bool:
        """Started and not draining. Every model in the catalog has a READY version by
        construction (a version is published only once loaded and warm)."""
        return self._started and not self._closing

    def _served(self, name: str, version: int) -> ServedModel:
        return self.lifecycle.served(name, version)

    def admit(self, model: ModelInfo, size: int = 1) -> None:
        if self._closing:
            raise ShuttingDown("server is shutting down; retry on another replica")
        self._served(model.name, model.version).batcher.check_room(size)

    def enqueue(self, job: Job) -> asyncio.Future:
        """Queue ``job`` without waiting: the engine process resolves many jobs by callback.
        A chunk of a server-kept sequence goes through ``streams``, which keeps its order."""
        if job.stream is not None:
            return self.streams.enqueue(job)
        return self._served(job.model, job.version).batcher.enqueue(job, job.size, job.length)

    def cancel(self, job: Job, future: asyncio.Future) -> None:
        if job.stream is not None:
            self.streams.cancel(job, future)
            return
        try:
            self._served(job.model, job.version).batcher.cancel(future)
        except ModelNotFound:  # the version closed meanwhile; its queue is gone
            future.cancel()

    async def submit(self, job: Job) -> Completed[dict[str, Any]]:
        future = self.enqueue(job)
        try:
            return await future
        finally:
            if not future.done() or future.cancelled():
                self.cancel(job, future)

    async def stats(self, models: list[ModelInfo]) -> list[dict[str, Any]]:
        return [self._served(m.name, m.version).stats.to_triton(m.name, str(m.version)) for m in models]

    async def index(self) -> list[dict[str, str]]:
        return self.lifecycle.index()

    async def load(self, name: str) -> None:
        await self.lifecycle.load(name)

    async def unload(self, name: str) -> None:
        await self.lifecycle.unload(name)

    async def control(self, op: str, **args: Any) -> Any:
        """Control calls that remote workers make over the link (off the inference path)."""
        if op == "stats":
            return await self.stats([self.catalog()[name][version] for name, version in args["models"]])
        if op == "index":
            return await self.index()
        if op in ("load", "unload"):
            await getattr(self, op)(str(args.get("name", "")))
            return {}
        raise InvalidInput(f"unknown engine operation {op!r}")

    def queued(self, name: str, version: int) -> int:
        """Sequences waiting for this version (what remote workers admit against)."""
        try:
            return self._served(name, version).batcher.queued
        except ModelNotFound:
            return 0

    async def close(self, timeout_s: float) -> None:
        self._closing = True
        self._catalog = {n: {v: dataclasses.replace(i, ready=False) for v, i in vs.items()}
                         for n, vs in self._catalog.items()}
        if self._sweeper is not None:
            self._sweeper.cancel()
        deadline = asyncio.get_running_loop().time() + timeout_s
        await self.streams.close(timeout_s)  # held chunks still enter the batchers
        await self.lifecycle.close(max(0.0, deadline - asyncio.get_running_loop().time()))
