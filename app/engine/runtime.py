"""ONNX Runtime sessions: execution provider and thread settings chosen once, at load.

Kept thin on purpose (as ONNX Runtime's own Python wrapper is): policy lives in the settings
and the batcher, this module only builds sessions and runs them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from app.config import Settings
from app.contract import SEQUENCE_LENS, ContractError, ModelSpec

log = logging.getLogger("lstm_serve.runtime")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def _ort():  # type: ignore[no-untyped-def]
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "onnxruntime is not installed: install lstm-serve[cpu] (onnxruntime) or "
            "lstm-serve[gpu] (onnxruntime-gpu), never both"
        ) from exc
    return onnxruntime


def choose_providers(preference: str) -> list[str]:
    """Providers for a session: CUDA when asked for (or when ``auto`` finds it), then CPU."""
    available = _ort().get_available_providers()
    if preference == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if preference == "cuda":
        raise RuntimeError(
            f"providers=cuda but ONNX Runtime offers only {available}: install lstm-serve[gpu] "
            "(onnxruntime-gpu) on a machine with an NVIDIA GPU, or set LSTM_SERVE_PROVIDERS=auto"
        )
    return [CPU]


class Runtime:
    """One ONNX Runtime session for one model version, with the spec read from its metadata."""

    def __init__(self, path: Path, settings: Settings) -> None:
        ort = _ort()
        requested = choose_providers(settings.providers)
        self.session = ort.InferenceSession(str(path), sess_options=_options(settings, settings.ort_threads),
                                            providers=requested)
        self.provider: str = self.session.get_providers()[0]
        if settings.providers == "cuda" and self.provider != CUDA:
            raise RuntimeError(f"{path}: CUDA was asked for but the session runs on {self.provider}")
        meta = self.session.get_modelmeta().custom_metadata_map
        self.spec = ModelSpec.from_metadata(dict(meta))
        self._check_io(path)
        if self.spec.precision == "fp16" and self.provider != CUDA:
            # ONNX Runtime's CPU kernels for fp16 LSTM graphs are slow at best and have crashed
            # the process at worst; fp16 artifacts are made for the CUDA provider.
            raise ContractError(
                f"{path} is an fp16 artifact, made for CUDA, but the session runs on {self.provider}; "
                "serve its fp32 or int8 version here (LSTM_SERVE_MODEL_VERSIONS)"
            )
        # A one-thread session for small batches (``small_batch_max_size``): same graph, same
        # outputs, only the intra-op threading differs.
        self.small_batch_max_size = 0
        self._small: Any = None
        if self.provider == CPU and settings.ort_threads != 1 and settings.small_batch_max_size > 0:
            self._small = ort.InferenceSession(str(path), sess_options=_options(settings, 1), providers=[CPU])
            self.small_batch_max_size = settings.small_batch_max_size

    def _check_io(self, path: Path) -> None:
        inputs = tuple(i.name for i in self.session.get_inputs())
        outputs = tuple(o.name for o in self.session.get_outputs())
        if set(inputs) != set(self.spec.input_names) or set(outputs) != set(self.spec.output_names):
            raise ContractError(
                f"{path}: graph inputs {inputs} / outputs {outputs} do not match the contract "
                f"for its metadata ({self.spec.input_names} / {self.spec.output_names})"
            )

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        session = self.session
        if self._small is not None and len(feeds[SEQUENCE_LENS]) <= self.small_batch_max_size:
            session = self._small
        return dict(zip(outputs, session.run(outputs, feeds)))


def _options(settings: Settings, threads: int) -> Any:
    """Session options from the settings, at ``threads`` intra-op threads."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_cpu_mem_arena = settings.cpu_mem_arena
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0")
    opts.log_severity_level = 3
    return opts
