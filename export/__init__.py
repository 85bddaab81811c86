"""lstm-serve's exporter: trained PyTorch stacked LSTM -> padding-aware, verified ONNX artifact.

This is the only package that imports torch. Public API::

    from export import StackedLSTM, export_model
    path = export_model(model, "models", "my-model")          # models/my-model/<next>/model.onnx

Names resolve lazily, so ``python -m export.ortrun`` and ``lstm-export --help`` start without
importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "StackedLSTM": "model",
    "POINTWISE_LAYERS": "model",
    "weights_sha256": "model",
    "export_model": "exporter",
    "read_card": "exporter",
    "Normalization": "graph",
    "build_graph": "graph",
    "ExportError": "errors",
    "UnsupportedModelError": "errors",
    "VerificationError": "errors",
    "CheckpointError": "errors",
    "load_checkpoint": "checkpoint",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from .checkpoint import load_checkpoint
    from .errors import CheckpointError, ExportError, UnsupportedModelError, VerificationError
    from .exporter import export_model, read_card
    from .graph import Normalization, build_graph
    from .model import POINTWISE_LAYERS, StackedLSTM, weights_sha256


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
