"""What HTTP code knows of the loaded models, wherever they run: one ``ModelInfo`` per
version, grouped in a ``Catalog``. An engine in another process sends it as JSON (the spec
travels as the artifact's own metadata, so both sides read it through ``contract``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .contract import ModelSpec


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model version: enough to decode, check and describe its requests."""

    name: str
    version: int
    spec: ModelSpec
    provider: str
    ready: bool

    def to_wire(self) -> dict[str, Any]:
        return {"meta": self.spec.to_metadata(), "provider": self.provider, "ready": self.ready}

    @classmethod
    def from_wire(cls, name: str, version: int, doc: dict[str, Any]) -> ModelInfo:
        return cls(name, version, ModelSpec.from_metadata(doc["meta"]), doc["provider"], doc["ready"])


Catalog = Mapping[str, Mapping[int, ModelInfo]]


def catalog_to_wire(catalog: Catalog) -> dict[str, dict[str, Any]]:
    return {name: {str(v): i.to_wire() for v, i in versions.items()} for name, versions in catalog.items()}


def catalog_from_wire(doc: dict[str, dict[str, Any]]) -> dict[str, dict[int, ModelInfo]]:
    return {name: {int(v): ModelInfo.from_wire(name, int(v), d) for v, d in versions.items()} for name, versions in doc.items()}
