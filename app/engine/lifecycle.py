"""Model lifecycle: the one owner of which versions serve, and of each version's state.

Every version the server knows is in exactly one state: ``LOADING`` (its session is being
built and warmed up, off the event loop), ``READY`` (in the catalog, serving), ``UNLOADING``
(out of the catalog, answering what it already accepted) or ``UNAVAILABLE`` (with a reason:
a bad file, not selected by the version policy, unloaded). Versions on disk that were never
loaded are reported as ``UNAVAILABLE`` too, so the repository index lists every version.

Why it works this way:

* **Atomic publication.** New versions are loaded and warmed up *before* they are published;
  the catalog (``catalog.Catalog``) is then replaced in one assignment, so a request sees the
  old set of versions or the new one, never a half-loaded model: no 404 or 503 during a swap.
* **Drain on replace.** A version leaving the catalog keeps serving the requests that chose it
  before the swap: ``publish`` returns only once no request holds it any more (in this
  process, and in every HTTP worker, see ``engine_server``), then its batcher drains its queue
  and closes, and its metric series are removed. The wait is bounded by ``drain_timeout_s``: a
  request still held past it (a client sending its body very slowly) may then get 404 or 503.
* **A bad model never replaces a serving one.** ``POST .../load`` is all or nothing: if any
  version it would load fails (corrupt, truncated, wrong contract), nothing changes and the
  error names the model, the version and the reason. At start and when polling, a bad version
  is marked ``UNAVAILABLE`` and the newest valid versions serve instead; a bad file is retried
  only once it changes. Only a model with no valid version stops the start.
* **One lock.** Loads, unloads and polls run one at a time, so each sees the state the
  previous one left.

What serves is decided per model by its settings file (``model_settings``): the version
policy (Triton's ``latest``/``all``/``specific``; default latest 1), the pinned default version
(always loaded), and the batching settings. The server setting ``model_versions`` overrides
the policy of the models it names.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from app.engine.catalog import Catalog, ModelInfo
from app.config import Settings
from app.v2.errors import ControlDisabled, InvalidInput, ModelNotFound, ServingError, ShuttingDown
from app.metrics import Metrics
from app.engine.model import ServedModel
from app.engine.model_settings import LATEST_ONE, Batching, ModelSettingsError, Specific, VersionPolicy, read
from app.engine.repository import ARTIFACT, RepositoryError, artifact, discover, scan, signature, versions
from app.v2 import names

log = logging.getLogger("lstm_serve.lifecycle")


class State(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class Version:
    """One version's state; ``model`` while LOADED/UNLOADING, ``loaded`` what it was built
    from (file signature and batching: a change loads it again), ``failed`` the same for a
    file that could not be served (not retried by ``poll`` until it changes)."""

    state: State
    reason: str = ""
    model: ServedModel | None = None
    loaded: tuple[Any, ...] | None = None
    failed: tuple[Any, ...] | None = None


Key = tuple[str, int]
# Called with each new catalog and the versions it no longer holds; returns once no request
# anywhere holds those versions (so they can drain and close).
Publish = Callable[[Catalog, set[Key]], Awaitable[None]]


class Lifecycle:
    def __init__(self, settings: Settings, metrics: Metrics, publish: Publish) -> None:
        self.root: Path = settings.model_repository.resolve()
        self.settings = settings
        self._metrics = metrics
        self._publish = publish
        self._versions: dict[str, dict[int, Version]] = {}
        self._defaults: dict[str, int] = {}
        self._policies: dict[str, str] = {}
        self._live: dict[Key, ServedModel] = {}  # published, or leaving and still draining
        self._unloaded: set[str] = set()  # unloaded through the API: poll leaves them alone
        self._poll_errors: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._closing = False
        self._poller: asyncio.Task | None = None
        self.catalog: Catalog = {}

    # -- lookups -----------------------------------------------------------------------------
    def served(self, name: str, version: int) -> ServedModel:
        """The model a job for (name, version) goes to: published, or leaving but not closed."""
        try:
            return self._live[(name, version)]
        except KeyError:
            raise ModelNotFound(f"model '{name}' has no loaded version {version}") from None

    def index(self) -> list[dict[str, str]]:
        """Every version in the repository or in memory: name, version, state, reason."""
        try:
            disk = scan(self.root)
        except RepositoryError:
            disk = {}
        out = []
        for name in sorted(set(disk) | set(self._versions)):
            records = self._versions.get(name, {})
            for v in sorted(set(disk.get(name, [])) | set(records)):
                r = records.get(v)
                if r is None:
                    state, reason = State.UNAVAILABLE, self._not_loaded(name)
                else:
                    state, reason = r.state, r.reason
                out.append({"name": name, "version": str(v), "state": str(state), "reason": reason})
        return out

    def _not_loaded(self, name: str) -> str:
        if name in self._unloaded:
            return "unloaded"
        if name in self._policies and any(r.state is State.READY for r in self._versions.get(name, {}).values()):
            return f"not selected by the version policy ({self._policies[name]})"
        return "not loaded"

    # -- start, poll, close --------------------------------------------------------------------
    async def start(self) -> None:
        """Load what each model's policy selects; a bad version is UNAVAILABLE and an older
        valid one serves; a model with no valid version stops the start (RepositoryError)."""
        available = discover(self.root)
        for name, wanted in self.settings.model_versions.items():
            missing = sorted(set(wanted) - set(available.get(name, [])))
            if missing:
                raise RepositoryError(f"model '{name}' has no version(s) {missing} in {self.root}")
        async with self._lock:
            for name in available:
                try:
                    await self._sync(name, "start")
                except ModelSettingsError as exc:
                    raise RepositoryError(str(exc)) from None
        if self.settings.model_control_mode == "poll":
            self._poller = asyncio.create_task(self._poll_forever(), name="repository-poll")

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_s)
            try:
                await self.poll()
            except Exception:  # a poll must never stop polling
                log.exception("repository poll failed")

    async def poll(self) -> None:
        """Bring the served versions in line with the repository: new versions and models load,
        removed ones unload, changed files and settings reload, bad files are reported."""
        async with self._lock:
            if self._closing:
                return
            try:
                disk = scan(self.root)
            except RepositoryError as exc:
                self._once("", str(exc))
                return
            for name in disk:
                if name in self._unloaded:
                    continue
                try:
                    await self._sync(name, "poll")
                    self._poll_errors.pop(name, None)
                except (ModelSettingsError, ServingError) as exc:
                    self._once(name, str(exc))
            for name, records in list(self._versions.items()):
                if name not in disk and any(r.state is State.READY for r in records.values()):
                    log.info("model removed from the repository; unloading", extra={"model": name})
                    await self._unload(name, "removed from the repository")

    def _once(self, name: str, message: str) -> None:
        if self._poll_errors.get(name) != message:
            self._poll_errors[name] = message
            log.error("repository poll: %s", message, extra={"model": name})

    async def close(self, timeout_s: float) -> None:
        """Stop polling and drain every version (SIGTERM); bounded by ``timeout_s``."""
        self._closing = True
        if self._poller is not None:
            self._poller.cancel()
        models = {id(m): m for m in self._live.values()}
        for records in self._versions.values():
            for r in records.values():
                if r.model is not None:
                    models[id(r.model)] = r.model
        await asyncio.gather(*(m.close(timeout_s, retire_metrics=False) for m in models.values()))

    # -- the control API -----------------------------------------------------------------------
    def _check_control(self) -> None:
        if self.settings.model_control_mode == "none":
            raise ControlDisabled(
                "model control is disabled (model_control_mode=none); start the server with "
                "--model-control-mode explicit or poll (LSTM_SERVE_MODEL_CONTROL_MODE) to load and "
                "unload models at run time"
            )
        if self._closing:
            raise ShuttingDown("server is shutting down; retry on another replica")

    def _check_name(self, name: str) -> None:
        names.check_name(name)

    async def load(self, name: str) -> None:
        """Re-read ``<repository>/<name>/`` and serve what its policy selects; all or nothing.
        Returns once the new versions serve and the versions they replace have drained."""
        self._check_control()
        self._check_name(name)
        async with self._lock:
            if not versions(self.root / name):
                raise ModelNotFound(f"model '{name}' is not in the repository {self.root} (no {name}/<version>/{ARTIFACT})")
            try:
                await self._sync(name, "load")
            except ModelSettingsError as exc:
                raise InvalidInput(f"cannot load model '{name}': {exc}") from None
            self._unloaded.discard(name)

    async def unload(self, name: str) -> None:
        """Take every version of ``name`` out of service; returns once their queues drained."""
        self._check_control()
        self._check_name(name)
        async with self._lock:
            if name not in self._versions and not (self.root / name).is_dir():
                raise ModelNotFound(f"unknown model '{name}': not in the repository {self.root} and not loaded")
            self._unloaded.add(name)
            await self._unload(name, "unloaded")

    # -- the work ------------------------------------------------------------------------------
    def _open(self, name: str, version: int, path: Path, batching: Batching) -> ServedModel:
        """Build and warm up one version (on a worker thread)."""
        model = ServedModel(name, version, path, self.settings, self._metrics, batching)
        if self.settings.warmup:
            model.warm_up()
        model.ready = True
        return model

    async def _sync(self, name: str, mode: str) -> None:
        """Load what ``name``'s settings select, publish, retire what they no longer select.

        ``mode``: ``load`` (all or nothing, InvalidInput on any failure), ``start`` (bad
        versions skipped, RepositoryError if none serves) or ``poll`` (bad versions skipped,
        the serving ones kept)."""
        strict = mode == "load"
        model_dir = self.root / name
        ms, batching = read(model_dir, self.settings)
        available = versions(model_dir)
        configured = self.settings.model_versions.get(name)
        policy = VersionPolicy(specific=Specific(versions=configured)) if configured else (ms.version_policy or LATEST_ONE)
        self._policies[name] = policy.describe()
        records = self._versions.setdefault(name, {})
        for v in [v for v, r in records.items() if r.state is State.UNAVAILABLE and v not in available]:
            del records[v]
        serving = {v for v, r in records.items() if r.state is State.READY}
        new: dict[int, tuple[ServedModel, tuple[Any, ...]]] = {}
        failures: list[str] = []

        async def attempt(v: int) -> bool:
            path = artifact(self.root, name, v)
            try:
                sig = (signature(path), batching)
            except OSError as exc:
                failures.append(f"cannot serve model '{name}' version {v} ({path}): {exc.strerror or exc}")
                return v in serving
            rec = records.get(v)
            if rec is not None and rec.state is State.READY and rec.loaded == sig:
                return True
            if not strict and rec is not None and rec.failed == sig:
                return rec.state is State.READY  # known bad and unchanged: not retried
            if rec is None or rec.state is not State.READY:
                records[v] = Version(State.LOADING)
            try:
                model = await asyncio.to_thread(self._open, name, v, path, batching)
            except Exception as exc:
                reason = f"cannot serve model '{name}' version {v} ({path}): {exc}"
                log.error("load failed", extra={"model": name, "version": v, "error": reason})
                failures.append(reason)
                if rec is not None and rec.state is State.READY:  # the loaded copy keeps serving
                    rec.failed = sig
                    return True
                records[v] = Version(State.UNAVAILABLE, reason, failed=sig)
                return False
            new[v] = (model, sig)
            return True

        chosen: list[int] = []
        if policy.latest is not None and not strict:
            for v in reversed(available):  # the newest *valid* versions
                if len(chosen) == policy.latest.num_versions:
                    break
                if await attempt(v):
                    chosen.append(v)
        else:
            for v in policy.select(available):
                if await attempt(v):
                    chosen.append(v)
                elif strict:
                    break
        default = ms.default_version
        if default is not None and default not in chosen and not (strict and failures):
            if default not in available:
                failures.append(f"model '{name}': default_version {default} has no {ARTIFACT} in {model_dir}")
                log.error("default version missing", extra={"model": name, "error": failures[-1]})
            elif await attempt(default):
                chosen.append(default)

        if strict and (failures or not chosen):
            await self._discard(name, new, serving)
            keeps = f"; model '{name}' keeps serving version(s) {sorted(serving)}" if serving else ""
            raise InvalidInput(("; ".join(failures) or f"model '{name}': the version policy ({policy.describe()}) "
                                f"selects none of the versions {available}") + keeps)
        if not chosen:
            await self._discard(name, new, serving)
            if mode == "start":
                raise RepositoryError("; ".join(failures) or f"model '{name}': the version policy "
                                      f"({policy.describe()}) selects none of the versions {available}")
            return  # poll: nothing valid to serve instead; what serves keeps serving

        if self._closing:  # SIGTERM while loading: publish nothing new
            await self._discard(name, new, serving)
            raise ShuttingDown("server is shutting down; retry on another replica")
        leaving = serving - set(chosen)
        retired: list[tuple[ServedModel, bool]] = []
        for v in leaving:
            records[v].state = State.UNLOADING
            assert records[v].model is not None
            retired.append((records[v].model, True))  # type: ignore[arg-type]
        for v, (model, sig) in new.items():
            old = records.get(v)
            if old is not None and old.state is State.READY and old.model is not None:
                retired.append((old.model, False))  # replaced in place: same series
            records[v] = Version(State.READY, model=model, loaded=sig)
            self._live[(name, v)] = model
        old_default = self._defaults.get(name)
        if default is not None and default in chosen:
            self._defaults[name] = default
        else:
            self._defaults.pop(name, None)
        if not new and not retired and old_default == self._defaults.get(name) and name in self.catalog:
            return
        for v, (model, _) in sorted(new.items()):
            log.info("loaded model", extra={"model": name, "version": v, "provider": model.provider,
                                            "spec": model.spec.describe()})
        await self._swap({(name, v) for v in leaving})
        await self._retire(name, retired, available, f"unloaded: not selected by the version policy ({policy.describe()})")

    async def _discard(self, name: str, new: dict[int, tuple[ServedModel, tuple[Any, ...]]], serving: set[int]) -> None:
        """Close versions loaded for a change that is not made; their records go back."""
        records = self._versions[name]
        for v, (model, _) in new.items():
            await model.close(0.0, retire_metrics=v not in serving)
            if records.get(v) is not None and records[v].state is State.LOADING:
                del records[v]

    async def _unload(self, name: str, reason: str) -> None:
        records = self._versions.get(name, {})
        serving = {v: r for v, r in records.items() if r.state is State.READY}
        for r in serving.values():
            r.state = State.UNLOADING
        self._defaults.pop(name, None)
        if not serving:
            return
        await self._swap({(name, v) for v in serving})
        await self._retire(name, [(r.model, True) for r in serving.values() if r.model is not None],
                           versions(self.root / name) if reason == "unloaded" else [], reason)
        log.info("unloaded model", extra={"model": name, "versions": sorted(serving), "reason": reason})

    async def _swap(self, leaving: set[Key]) -> None:
        """Publish the catalog of every READY version; returns once nothing holds ``leaving``."""
        self.catalog = self._build()
        await self._publish(self.catalog, leaving)

    def _build(self) -> Catalog:
        catalog: dict[str, dict[int, ModelInfo]] = {}
        for name, records in self._versions.items():
            ready = {v: r.model for v, r in sorted(records.items()) if r.state is State.READY and r.model is not None}
            if not ready:
                continue
            default = self._defaults.get(name)
            if default not in ready:
                default = max(ready)
            catalog[name] = {v: m.info(ready=not self._closing, default=v == default) for v, m in ready.items()}
        return catalog

    async def _retire(self, name: str, retired: list[tuple[ServedModel, bool]], on_disk: list[int], reason: str) -> None:
        """Drain and close versions already out of the catalog, then record why they left."""
        await asyncio.gather(*(m.close(self.settings.drain_timeout_s, keep) for m, keep in retired))
        records = self._versions.get(name, {})
        for model, _ in retired:
            key = (name, model.version)
            if self._live.get(key) is model:
                del self._live[key]
            r = records.get(model.version)
            if r is not None and r.state is State.UNLOADING:
                if model.version in on_disk or reason == "unloaded":
                    records[model.version] = Version(State.UNAVAILABLE, reason)
                else:
                    del records[model.version]
