"""The engine boundary: the one interface HTTP code uses to reach models.

HTTP code (routes, ``inference``) looks models up, asks for admission and submits jobs; it
never touches a batcher, a session or the repository. Two implementations speak this
interface, in the manner of vLLM's engine-core client:

* :class:`LocalEngine`: the repository and one batcher per model version in this process
  (``workers=1``, and every worker of ``engine=per_worker``);
* ``remote.RemoteEngine``: a client of the one engine process that owns every ONNX Runtime
  session and batcher (``engine=shared`` with several HTTP workers), so batches form across
  all workers. The engine process itself runs a :class:`LocalEngine` (``engine_server``).

Model lookup (latest version by default, 404 and 503 rules) lives here once, for both.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any

from .batcher import Completed
from .catalog import Catalog, ModelInfo
from .config import Settings
from .errors import InvalidInput, ModelNotFound, ModelNotReady, ShuttingDown
from .metrics import Metrics
from .model import ServedModel
from .repository import Repository
from .sequences import Job
from .streams import Streams

class Engine(ABC):
    """Models, admission and batched inference, wherever they run."""

    @abstractmethod
    async def start(self) -> None:
        """Load models (local) or connect to the engine process (remote)."""

    @abstractmethod
    async def close(self, timeout_s: float) -> None:
        """Answer everything accepted, then stop; bounded by ``timeout_s``."""

    @abstractmethod
    def catalog(self) -> Catalog:
        """Loaded models: name -> version -> info."""

    @property
    @abstractmethod
    def ready(self) -> bool:
        """Every model is loaded and warm, and the engine (and, when remote, every worker) is up."""

    @abstractmethod
    def admit(self, model: ModelInfo, size: int = 1) -> None:
        """Refuse up front (QueueFull, ShuttingDown, Unavailable) before a body is decoded."""

    @abstractmethod
    async def submit(self, job: Job) -> Completed[dict[str, Any]]:
        """Queue ``job`` and wait for its outputs; cancelling the wait takes it off the queue."""

    @abstractmethod
    async def stats(self, models: list[ModelInfo]) -> list[dict[str, Any]]:
        """Triton's statistics of these versions (``stats``), counted where their batches run."""

    def model(self, name: str, version: str | None = None) -> ModelInfo:
        """The version a request addresses: the latest loaded one unless ``version`` is given."""
        catalog = self.catalog()
        versions = catalog.get(name)
        if not versions:
            raise ModelNotFound(f"unknown model '{name}'; this server serves {sorted(catalog)}")
        if version is None:
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


class LocalEngine(Engine):
    """The repository and its batchers, in this process."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.repository = Repository(settings, metrics)
        self.streams = Streams(settings, metrics, lambda name, version: self._served(name, version).batcher)
        self._catalog: dict[str, dict[int, ModelInfo]] = {}
        self._closing = False
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.repository.load)
        self._publish()
        self._sweeper = asyncio.create_task(self.streams.sweep(), name="evict-idle-sequences")

    def _publish(self) -> None:
        self._catalog = {
            name: {v: m.info(ready=m.ready and not self._closing) for v, m in versions.items()}
            for name, versions in self.repository.models.items()
        }

    def catalog(self) -> Catalog:
        return self._catalog

    @property
    def ready(self) -> bool:
        return self.repository.ready and not self._closing

    def _served(self, name: str, version: int) -> ServedModel:
        try:
            return self.repository.models[name][version]
        except KeyError:
            raise ModelNotFound(f"model '{name}' has no loaded version {version}") from None

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
        else:
            self._served(job.model, job.version).batcher.cancel(future)

    async def submit(self, job: Job) -> Completed[dict[str, Any]]:
        future = self.enqueue(job)
        try:
            return await future
        finally:
            if not future.done() or future.cancelled():
                self.cancel(job, future)

    async def stats(self, models: list[ModelInfo]) -> list[dict[str, Any]]:
        return [self._served(m.name, m.version).stats.to_triton(m.name, str(m.version)) for m in models]

    async def control(self, op: str, **args: Any) -> Any:
        """Control calls that remote workers make over the link (off the inference path)."""
        if op == "stats":
            return await self.stats([self.catalog()[name][version] for name, version in args["models"]])
        raise InvalidInput(f"unknown engine operation {op!r}")

    def queued(self, name: str, version: int) -> int:
        """Sequences waiting for this version (what remote workers admit against)."""
        return self._served(name, version).batcher.queued

    async def close(self, timeout_s: float) -> None:
        self._closing = True
        self._publish()
        if self._sweeper is not None:
            self._sweeper.cancel()
        deadline = asyncio.get_running_loop().time() + timeout_s
        await self.streams.close(timeout_s)  # held chunks still enter the batchers
        await self.repository.drain(max(0.0, deadline - asyncio.get_running_loop().time()))
