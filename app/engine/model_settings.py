"""Per-model settings: an optional ``<repository>/<model>/settings.json``, validated by pydantic.

Why a file beside the versions: a model's owner decides which of its versions serve and how it
batches, without touching the server's deployment; the server's own settings are the defaults.
The file is read when the model loads (at start, on ``POST .../load``, on each ``poll``), so a
change takes effect without a restart. Every field is optional::

    {
      "version_policy": {"latest": {"num_versions": 2}},   # or {"all": {}}, {"specific": {"versions": [1, 3]}}
      "default_version": 1,                               # what unversioned requests get
      "max_batch_size": 64, "max_queue_delay_ms": 1.0, "max_queue_size": 512
    }

``version_policy`` uses Triton's names and shapes. Without ``default_version``, unversioned
requests go to the newest loaded version. The default version is always loaded, whatever the
policy selects: pinning it is how an int8 or fp16 variant gets written beside an fp32 model
without taking over its unversioned traffic (``lstm-export`` does exactly that).

An invalid file is refused with a message naming the file and the field.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.config import Settings

SETTINGS_FILE = "settings.json"


class ModelSettingsError(ValueError):
    """A model's settings file is unreadable or invalid; the message names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Latest(_Strict):
    num_versions: int = Field(1, ge=1)
    """How many of the newest versions serve."""


class Specific(_Strict):
    versions: list[int] = Field(min_length=1)
    """Exactly these versions serve."""


class VersionPolicy(_Strict):
    """Triton's ``version_policy``: exactly one of ``latest``, ``all``, ``specific``."""

    latest: Latest | None = None
    all: dict[str, Any] | None = None
    specific: Specific | None = None

    @model_validator(mode="after")
    def _one(self) -> VersionPolicy:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(f"exactly one of 'latest', 'all', 'specific' is required, got {chosen or 'none'}")
        if self.all:
            raise ValueError("'all' takes no fields: {}")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions this policy serves, of those ``available`` (ascending)."""
        if self.latest is not None:
            return sorted(available)[-self.latest.num_versions :]
        if self.all is not None:
            return sorted(available)
        assert self.specific is not None
        return sorted(set(self.specific.versions) & set(available))

    def describe(self) -> str:
        if self.latest is not None:
            return f"latest {self.latest.num_versions}"
        if self.all is not None:
            return "all"
        assert self.specific is not None
        return f"specific {sorted(self.specific.versions)}"


LATEST_ONE = VersionPolicy(latest=Latest(num_versions=1))


class ModelSettings(_Strict):
    """What ``settings.json`` may hold; a field left out takes the server's setting."""

    version_policy: VersionPolicy | None = None
    """Which versions serve (Triton's ``version_policy``); default: the latest one."""

    default_version: int | None = Field(None, ge=1)
    """The version unversioned requests get; default: the newest loaded version."""

    max_batch_size: int | None = Field(None, ge=1, le=4096)
    max_queue_delay_ms: float | None = Field(None, ge=0.0, le=10_000.0)
    max_queue_size: int | None = Field(None, ge=1)

    def batching(self, server: Settings) -> Batching:
        """This model's batching settings: its own where set, the server's otherwise."""
        b = Batching(
            max_batch_size=self.max_batch_size or server.max_batch_size,
            max_queue_delay_ms=server.max_queue_delay_ms if self.max_queue_delay_ms is None else self.max_queue_delay_ms,
            max_queue_size=self.max_queue_size or server.max_queue_size,
        )
        if b.max_queue_size < b.max_batch_size:
            raise ValueError(f"max_queue_size ({b.max_queue_size}) must be >= max_batch_size ({b.max_batch_size})")
        return b


class Batching(_Strict):
    """A version's batcher settings, resolved against the server's."""

    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int


def _explain(path: Path, exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(file)"
        parts.append(f"field '{field}': {e['msg']}")
    return f"{path}: " + "; ".join(parts)


def read(model_dir: Path, server: Settings) -> tuple[ModelSettings, Batching]:
    """The model's settings (defaults when it has no file) and its resolved batching.

    Raises :class:`ModelSettingsError` naming the file and the field."""
    path = model_dir / SETTINGS_FILE
    if not path.exists():
        settings = ModelSettings()
    else:
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelSettingsError(f"{path}: not readable JSON ({exc})") from None
        try:
            settings = ModelSettings.model_validate(doc)
        except ValidationError as exc:
            raise ModelSettingsError(_explain(path, exc)) from None
    try:
        return settings, settings.batching(server)
    except ValueError as exc:
        raise ModelSettingsError(f"{path}: field 'max_queue_size': {exc}") from None


def read_raw(model_dir: Path) -> dict[str, Any]:
    """The file as JSON (empty when absent), for tools that update one field of it."""
    path = model_dir / SETTINGS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write(model_dir: Path, doc: dict[str, Any]) -> Path:
    """Validate and write ``doc`` atomically (a server polling the repository never reads half
    a file)."""
    try:
        ModelSettings.model_validate(doc)
    except ValidationError as exc:
        raise ModelSettingsError(_explain(model_dir / SETTINGS_FILE, exc)) from None
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".{SETTINGS_FILE}.{uuid.uuid4().hex}"
    with open(tmp, "w") as fh:
        fh.write(json.dumps(doc, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, model_dir / SETTINGS_FILE)
    return model_dir / SETTINGS_FILE
