"""What HTTP code knows of the served models, wherever they run: one ``ModelInfo`` per
version, grouped in a ``Catalog``. An engine in another process sends it as JSON (the spec
travels as the artifact's own metadata, so both sides read it through ``contract``).

A catalog is immutable once published: the lifecycle (``lifecycle``) builds a new one and
swaps it in whole, so a request sees either the old set of versions or the new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.contract import ModelSpec


@dataclass(frozen=True)
class ModelInfo:
    """A served model version: enough to decode, check, admit and describe its requests.

    ``default``: unversioned requests go to this version. ``max_batch_size`` and
    ``max_queue_size`` are the version's own (its model's settings file, else the server's),
    so a worker in another process refuses exactly as the engine would."""

    name: str
    version: int
    spec: ModelSpec
    provider: str
    ready: bool
    default: bool = False
    max_batch_size: int = 32
    max_queue_size: int = 256

    def to_wire(self) -> dict[str, Any]:
        return {"meta": self.spec.to_metadata(), "provider": self.provider, "ready": self.ready,
                "default": self.default, "batch": self.max_batch_size, "queue": self.max_queue_size}

    @classmethod
    def from_wire(cls, name: str, version: int, doc: dict[str, Any]) -> ModelInfo:
        return cls(name, version, ModelSpec.from_metadata(doc["meta"]), doc["provider"], doc["ready"],
                   doc["default"], doc["batch"], doc["queue"])


Catalog = Mapping[str, Mapping[int, ModelInfo]]


def catalog_to_wire(catalog: Catalog) -> dict[str, dict[str, Any]]:
    return {name: {str(v): i.to_wire() for v, i in versions.items()} for name, versions in catalog.items()}


def catalog_from_wire(doc: dict[str, dict[str, Any]]) -> dict[str, dict[int, ModelInfo]]:
    return {name: {int(v): ModelInfo.from_wire(name, int(v), d) for v, d in versions.items()} for name, versions in doc.items()}


def versions_of(catalog: Catalog) -> set[tuple[str, int]]:
    """Every (model, version) a catalog serves."""
    return {(name, v) for name, versions in catalog.items() for v in versions}
