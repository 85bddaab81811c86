"""``export_model``: model -> verified, self-describing artifact in a model repository.

Layout: ``repository/<name>/<version>/model.onnx`` (one self-contained file) and ``model.json``
(the model card) beside it. The version directory is assembled under a hidden temporary name in
the same directory, every file fsynced, and then renamed into place in one step, so a server
scanning the repository sees either no version or a complete one. An existing version is never
overwritten.

What unversioned requests get: the newest version, unless the model's ``settings.json``
(``app.engine.model_settings``) pins ``default_version``. A new fp32 export becomes the default (as a
retrained model should); an int8 or fp16 *variant* does not, unless asked (``default=True``,
``lstm-export --variant-default``): before the variant's directory appears, the exporter pins
the version that unversioned requests get now, so a server polling the repository never
switches to the variant. The variant is still loaded and served at its versioned path (the
pinned default is always loaded, and the version policy selects the variant).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from app import contract as C
from app.engine import model_settings

from . import __version__, card as card_mod, ortrun
from .errors import ExportError
from .graph import Normalization, build_graph
from .model import StackedLSTM, as_stacked_lstm, weights_sha256
from .precision import compare_variant, quantize_int8
from .verify import DEFAULT_TOLERANCE, make_cases, reference, verify

MODEL_FILE = "model.onnx"
CARD_FILE = "model.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
LATENCY_BATCHES = (1, 64)


def existing_versions(model_dir: Path) -> list[int]:
    """Integer-named version directories (temporary ``.tmp-*`` ones are not versions)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_version(model_dir: Path, version: int | None,
                  files: Mapping[str, bytes | Callable[[int], bytes]]) -> Path:
    """Atomically publish ``files`` as ``model_dir/<version>/``; returns that directory.

    A file's content may be a function of the version it lands in (the model card records it).
    ``version=None`` takes the next free positive integer, and the next one again if a
    concurrent export took it first.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()

    def write(fname: str, data: bytes) -> None:
        with open(tmp / fname, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    try:
        for fname, data in files.items():
            if isinstance(data, bytes):
                write(fname, data)
        for _ in range(100):
            candidate = version if version is not None else max(existing_versions(model_dir), default=0) + 1
            target = model_dir / str(candidate)
            if target.exists():
                if version is not None:
                    raise ExportError(
                        f"{target} already exists; versions are never overwritten: omit the "
                        "version to take the next one, or remove that version first"
                    )
                continue
            for fname, data in files.items():
                if not isinstance(data, bytes):
                    write(fname, data(candidate))
            _fsync(tmp)
            try:
                os.rename(tmp, target)  # atomic; fails if a non-empty target appeared meanwhile
            except OSError:
                if version is not None:
                    raise ExportError(f"{target} appeared while exporting; not overwritten") from None
                continue
            _fsync(model_dir)
            return target
        raise ExportError(f"could not find a free version under {model_dir}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _resolve_version(model_dir: Path, version: int | None) -> int | None:
    if version is None:
        return None
    if int(version) < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    if (model_dir / str(int(version))).exists():
        raise ExportError(
            f"{model_dir / str(int(version))} already exists; versions are never overwritten: "
            "omit the version to take the next one"
        )
    return int(version)


def export_model(
    model: Any,
    repository: str | os.PathLike[str],
    name: str,
    version: int | None = None,
    *,
    task: str | None = None,
    precision: str = "fp32",
    normalization: Any = None,
    feature_names: Sequence[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    card_latency: bool = True,
    reference_length: int = 50,
    latency_runs: int = 30,
    card_extra: Mapping[str, Any] | None = None,
    seed: int = 0,
    verbose: bool = False,
    default: bool | None = None,
) -> Path:
    """Export ``model`` to ``repository/name/version/model.onnx``, verified; return that path.

    ``model``: a :class:`StackedLSTM`, any ``nn.Module`` with ``.lstm`` (nn.LSTM) and ``.head``
    (and optionally ``.task``), or the pair ``(lstm, head)``. ``task`` overrides/declares the
    task for the latter two. ``precision``: ``"fp32"``, ``"fp16"`` or ``"int8"``; a variant is
    measured against fp32 and written as its own version. ``normalization``: per-feature
    ``(mean, std)`` or ``{"mean", "std"}``, applied inside the graph (clients send raw
    features). ``feature_names``: one per input feature. ``tolerance``: max absolute error
    against per-sequence PyTorch (float32). ``card_latency``: measure ONNX Runtime latency at
    batch 1 and 64 for ``reference_length`` steps (``latency_runs`` runs each). ``card_extra``:
    merged into the model card (e.g. ``{"evaluation": {...}}``). ``version``: next free integer
    when ``None``; an existing version is an error. ``default``: whether unversioned requests
    get this version once written; ``None`` means yes for fp32 and no for a variant (see the
    module's docstring).

    Raises :class:`UnsupportedModelError`, :class:`VerificationError` or :class:`ExportError`.
    """
    if precision not in C.PRECISIONS:
        raise ExportError(f"precision must be one of {C.PRECISIONS}, got {precision!r}")
    if not _NAME.match(name):
        raise ExportError(f"model name {name!r} must be letters, digits, '_', '-', '.' (not leading)")
    model_dir = Path(repository) / name
    version = _resolve_version(model_dir, version)

    source = as_stacked_lstm(model, task)
    sm = copy.deepcopy(source).cpu().float().eval()
    norm = Normalization.coerce(normalization, sm.input_size)
    extra = {
        C.META_EXPORTER_VERSION: __version__,
        C.META_TORCH_VERSION: str(torch.__version__),
        C.META_ONNX_VERSION: onnx.__version__,
        C.META_WEIGHTS_SHA256: weights_sha256(sm),
    }
    if norm is not None:
        extra[C.META_NORMALIZATION] = json.dumps(norm.to_json())
    spec = C.ModelSpec(
        task=sm.task,  # type: ignore[arg-type]
        input_size=sm.input_size,
        hidden_size=sm.hidden_size,
        num_layers=sm.num_layers,
        output_size=sm.output_size,
        bidirectional=sm.bidirectional,
        precision="fp32",
        feature_names=tuple(feature_names) if feature_names is not None else None,
        extra=extra,
    )

    started = time.perf_counter()
    fp32 = build_graph(sm, spec, norm)
    onnx.checker.check_model(fp32, full_check=True)
    fp32_sess = ortrun.session(fp32.SerializeToString())
    report = verify(fp32_sess, sm, spec, norm, tolerance=tolerance, seed=seed)

    batches = [(b, latency_runs if b == 1 else max(5, latency_runs // 3)) for b in LATENCY_BATCHES]
    fp32_latency: list[dict[str, Any]] = []
    if card_latency or precision != "fp32":
        fp32_latency = [ortrun.latency(fp32_sess, spec, length=reference_length, batch=b, runs=r)
                        for b, r in batches]

    out_model, out_spec = fp32, spec
    comparison = None
    if precision != "fp32":
        out_spec = C.ModelSpec(**{**{k: getattr(spec, k) for k in (
            "task", "input_size", "hidden_size", "num_layers", "output_size", "bidirectional",
            "feature_names")}, "precision": precision, "extra": dict(spec.extra)})
        out_model = build_graph(sm, out_spec, norm, fp16=True) if precision == "fp16" \
            else quantize_int8(fp32, out_spec)
        onnx.checker.check_model(out_model, full_check=precision == "fp16")
        cases = make_cases(spec, norm, seed)
        refs = [reference(sm, spec, c, norm) for c in cases]
        fp32_outs = [ortrun.run(fp32_sess, spec, c.x, c.lengths, c.h0, c.c0) for c in cases]
        comparison = compare_variant(
            out_model, out_spec, cases, refs, fp32_outs,
            {m["batch"]: m["median_ms"] for m in fp32_latency},
            latency_length=reference_length,
            latency_batches=batches if card_latency else [],
        )

    data = out_model.SerializeToString()
    if card_latency:
        if precision == "fp32":
            latency_rows = fp32_latency
        elif comparison and comparison.get("measured"):
            latency_rows = [
                {"batch": b, "length": reference_length, "runs": r,
                 "median_ms": comparison["latency_ms"][str(b)],
                 "sequences_per_s": round(b / (comparison["latency_ms"][str(b)] / 1e3), 1)}
                for b, r in batches
            ]
        else:
            latency_rows = []
        latency: dict[str, Any] = {"provider": "CPUExecutionProvider", "intra_op_threads": 1,
                                   "onnxruntime_version": ortrun.ort.__version__,
                                   "measurements": latency_rows}
        if not latency_rows:
            latency["skipped"] = "this precision does not run on this machine's provider"
    else:
        latency = {"skipped": "disabled (card_latency=False / --no-card-latency)"}

    card: dict[str, Any] = {
        "name": name,
        "precision": precision,
        "spec": out_spec.describe(),
        "metadata": out_spec.to_metadata(),
        "normalization": norm.to_json() if norm is not None else None,
        **card_mod.cost(sm),
        "verification": report,
        "latency": latency,
        "artifact": {"file": MODEL_FILE, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                     "opset": fp32.opset_import[0].version},
        "exporter": {"version": __version__, "torch": str(torch.__version__), "onnx": onnx.__version__,
                     "onnxruntime": ortrun.ort.__version__, "python": sys.version.split()[0],
                     "seconds": None},
    }
    if comparison is not None:
        card["precision_comparison"] = comparison
    if card_extra:
        card.update(dict(card_extra))
    card["exporter"]["seconds"] = round(time.perf_counter() - started, 2)

    def card_bytes(v: int) -> bytes:
        return (json.dumps({**card, "version": v}, indent=2, default=_json_default) + "\n").encode()

    becomes_default = precision == "fp32" if default is None else default
    if not becomes_default:
        keep_default(model_dir)
    target = write_version(model_dir, version, {MODEL_FILE: data, CARD_FILE: card_bytes})
    if becomes_default:
        move_default(model_dir, int(target.name))
    path = target / MODEL_FILE
    if verbose:
        print(card_mod.format_card({**card, "version": int(target.name), "path": str(path)}))
    return path


def _served_versions(model_dir: Path) -> list[int]:
    return [v for v in existing_versions(model_dir) if (model_dir / str(v) / MODEL_FILE).is_file()]


def keep_default(model_dir: Path) -> None:
    """Pin what unversioned requests get now (the pinned version, else the newest), so that a
    version written next does not take over. Nothing to pin for a model with no version yet."""
    doc = model_settings.read_raw(model_dir)
    current = _served_versions(model_dir)
    if doc.get("default_version") is None and current:
        model_settings.write(model_dir, {**doc, "default_version": current[-1]})


def move_default(model_dir: Path, version: int) -> None:
    """Make ``version`` what unversioned requests get: a pinned default moves to it (without a
    pin, the newest version is the default already)."""
    doc = model_settings.read_raw(model_dir)
    if doc.get("default_version") is not None and doc["default_version"] != version:
        model_settings.write(model_dir, {**doc, "default_version": version})


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_card(model_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model card stored beside ``model.onnx``."""
    return json.loads((Path(model_path).parent / CARD_FILE).read_text())


__all__ = ["CARD_FILE", "MODEL_FILE", "StackedLSTM", "export_model", "read_card", "write_version"]
