"""The model repository on disk: ``<repository>/<model>/<version>/model.onnx``, as Triton lays
it out, plus an optional ``<model>/settings.json`` (``model_settings``).

Only reading the directory lives here; what is loaded, when, and in which state each version
is belongs to ``lifecycle``. The artifacts describe themselves (ONNX metadata, see
``contract``), so a version needs no side configuration.
"""

from __future__ import annotations

from pathlib import Path

from app.startup import StartupError
from app.v2 import names

ARTIFACT = "model.onnx"
CARD = "model.json"


class RepositoryError(StartupError):
    """The repository or one of its models cannot be served; the message says which and why."""


def valid_name(name: str) -> bool:
    """A model name the repository can hold: the one rule of ``app.v2.names`` (no path tricks
    through the load API, the same names the URL guard lets through)."""
    return names.is_name(name)


def versions(model_dir: Path) -> list[int]:
    """A model's available versions (directories with a model.onnx), ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(v.name)
        for v in model_dir.iterdir()
        if v.is_dir() and names.is_version(v.name) and (v / ARTIFACT).is_file()
    )


def scan(root: Path) -> dict[str, list[int]]:
    """Every model with at least one version, and its versions; empty when there are none."""
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} does not exist or is not a directory")
    found: dict[str, list[int]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and valid_name(p.name)):
        available = versions(model_dir)
        if available:
            found[model_dir.name] = available
    return found


def discover(root: Path) -> dict[str, list[int]]:
    """Model names and their available versions; a repository with no model is an error."""
    found = scan(root)
    if not found:
        raise RepositoryError(f"model repository {root} holds no <model>/<version>/{ARTIFACT}")
    return found


def artifact(root: Path, name: str, version: int) -> Path:
    return root / name / str(version) / ARTIFACT


def signature(path: Path) -> tuple[int, int, int]:
    """What identifies a file's content cheaply (inode, size, mtime): a version whose file
    changes is loaded again, and a bad file is retried only once it changes."""
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)
