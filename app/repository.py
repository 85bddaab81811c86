"""The model repository: ``<repository>/<model>/<version>/model.onnx``, as Triton lays it out.

Each model loads its latest version, or the versions named in ``Settings.model_versions``. The
artifacts describe themselves (ONNX metadata, see ``contract``), so no side configuration is
read. A model that fails to load stops the start with a message naming it: a server that
silently serves part of its repository is worse than one that refuses to start.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from .config import Settings
from .metrics import Metrics
from .model import ServedModel

log = logging.getLogger("lstm_serve.repository")

ARTIFACT = "model.onnx"
CARD = "model.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class RepositoryError(RuntimeError):
    """The repository or one of its models cannot be served; the message says which and why."""


def discover(root: Path) -> dict[str, list[int]]:
    """Model names and their available versions (directories with a model.onnx), ascending."""
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} does not exist or is not a directory")
    found: dict[str, list[int]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)):
        versions = sorted(
            int(v.name)
            for v in model_dir.iterdir()
            if v.is_dir() and v.name.isdigit() and int(v.name) > 0 and (v / ARTIFACT).is_file()
        )
        if versions:
            found[model_dir.name] = versions
    if not found:
        raise RepositoryError(f"model repository {root} holds no <model>/<version>/{ARTIFACT}")
    return found


class Repository:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.root = settings.model_repository.resolve()
        self._settings = settings
        self._metrics = metrics
        self.models: dict[str, dict[int, ServedModel]] = {}

    def load(self) -> None:
        """Load (and warm up) every configured version; blocking, called off the event loop."""
        available = discover(self.root)
        for name, wanted in self._settings.model_versions.items():
            missing = sorted(set(wanted) - set(available.get(name, [])))
            if missing:
                raise RepositoryError(f"model '{name}' has no version(s) {missing} in {self.root}")
        for name, versions in available.items():
            chosen = self._settings.model_versions.get(name) or [versions[-1]]
            for version in chosen:
                path = self.root / name / str(version) / ARTIFACT
                try:
                    model = ServedModel(name, version, path, self._settings, self._metrics)
                    if self._settings.warmup:
                        model.warm_up(self._settings.max_batch_size)
                    model.ready = True
                except Exception as exc:
                    raise RepositoryError(f"cannot serve model '{name}' version {version} ({path}): {exc}") from exc
                self.models.setdefault(name, {})[version] = model
                log.info(
                    "loaded model",
                    extra={"model": name, "version": version, "provider": model.provider, "spec": model.spec.describe()},
                )

    def all(self) -> list[ServedModel]:
        return [m for versions in self.models.values() for m in versions.values()]

    @property
    def ready(self) -> bool:
        return bool(self.models) and all(m.ready for m in self.all())

    async def drain(self, timeout_s: float) -> None:
        for m in self.all():
            m.ready = False
        await asyncio.gather(*(m.batcher.drain(timeout_s) for m in self.all()))
