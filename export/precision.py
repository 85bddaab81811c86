"""Precision variants: fp16 (for GPUs) and int8 (ONNX Runtime dynamic quantisation, for CPUs).

Both keep exactly the fp32 graph's inputs and outputs (float32 / int32), so the server serves
them unchanged; ``precision`` in the metadata says which one it is. Each is measured against
PyTorch and against the fp32 graph, error and speed, and the numbers go into its model card.

* fp16: the LSTM layers compute in half precision (weights stored as fp16, casts inside the
  graph); the small head runs in fp32. Meant for the CUDA provider. On the CPU provider it is
  measured in a child process, because an fp16 graph can crash ONNX Runtime's CPU optimiser
  (seen with 1.32 on an fp16 head) and the exporter must survive that.
* int8: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights; LSTM -> DynamicQuantizeLSTM,
  MatMul -> MatMulInteger). CPU only.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from app import contract as C

from . import ortrun
from .errors import VerificationError
from .graph import set_metadata
from .verify import Case

# Relative L2 error of ``output`` against the fp32 graph past which a variant is refused.
VARIANT_TOLERANCE = {"fp16": 1e-2, "int8": 0.1}


def quantize_int8(fp32: onnx.ModelProto, spec: C.ModelSpec) -> onnx.ModelProto:
    """Dynamic int8 quantisation of the fp32 graph; metadata set from ``spec`` (precision int8)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # its pre-process hint
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        onnx.save(fp32, src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        quantized = onnx.load(dst)
    set_metadata(quantized, spec)
    return quantized


class VariantUnavailable(Exception):
    """The variant cannot be run here (the reason says why)."""


def _run_isolated(model: onnx.ModelProto, spec: C.ModelSpec, cases: list[Case],
                  latency_length: int, latency_batches: list[tuple[int, int]]
                  ) -> tuple[list[dict[str, np.ndarray]], dict[int, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        model_path, in_path, out_path = (os.path.join(tmp, n) for n in ("m.onnx", "in.npz", "out.npz"))
        onnx.save(model, model_path)
        arrays: dict[str, np.ndarray] = {"n_cases": np.array(len(cases))}
        for i, case in enumerate(cases):
            arrays[f"x_{i}"], arrays[f"lengths_{i}"] = case.x, case.lengths
            if case.h0 is not None and case.c0 is not None:
                arrays[f"h0_{i}"], arrays[f"c0_{i}"] = case.h0, case.c0
        arrays["latency_length"] = np.array(latency_length)
        arrays["latency_batches"] = np.array([b for b, _ in latency_batches] or [0])
        arrays["latency_runs"] = np.array([r for _, r in latency_batches] or [0])
        np.savez(in_path, **arrays)
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, "-m", "export.ortrun", model_path, in_path, out_path],
                              capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise VariantUnavailable(
                f"ONNX Runtime {ort.__version__} on the CPU provider could not run this "
                f"{spec.precision} graph (exit code {proc.returncode}{': ' + tail[0] if tail[0] else ''}); "
                "measure it on the CUDA provider"
            )
        data = np.load(out_path)
        outputs = [{name: data[f"{name}_{i}"] for name in spec.output_names}
                   for i in range(len(cases))]
        lat = {b: float(data[f"latency_{b}"]) for b, r in latency_batches if r > 0}
    return outputs, lat


def compare_variant(
    variant: onnx.ModelProto,
    spec: C.ModelSpec,
    cases: list[Case],
    references: list[dict[str, np.ndarray]],
    fp32_outputs: list[dict[str, np.ndarray]],
    fp32_latency: dict[int, float],
    *,
    latency_length: int,
    latency_batches: list[tuple[int, int]],
) -> dict[str, Any]:
    """Error (vs PyTorch and vs the fp32 graph) and speed (vs fp32) of a precision variant.

    Raises :class:`VerificationError` when the relative L2 error of ``output`` against fp32
    exceeds :data:`VARIANT_TOLERANCE`.
    """
    try:
        if spec.precision == "fp16":
            outputs, lat = _run_isolated(variant, spec, cases, latency_length, latency_batches)
        else:
            sess = ortrun.session(variant.SerializeToString())
            outputs = [ortrun.run(sess, spec, c.x, c.lengths, c.h0, c.c0) for c in cases]
            lat = {b: ortrun.latency(sess, spec, length=latency_length, batch=b, runs=r)["median_ms"]
                   for b, r in latency_batches if r > 0}
    except VariantUnavailable as exc:
        print(f"note: {spec.precision} not measured: {exc}", file=sys.stderr)
        return {"measured": False, "reason": str(exc)}

    got = np.concatenate([o[C.OUTPUT].ravel() for o in outputs]).astype(np.float64)
    fp32 = np.concatenate([o[C.OUTPUT].ravel() for o in fp32_outputs]).astype(np.float64)
    torch_ref = np.concatenate([r[C.OUTPUT].ravel() for r in references]).astype(np.float64)
    rel = float(np.linalg.norm(got - fp32) / max(np.linalg.norm(fp32), 1e-12))
    result: dict[str, Any] = {
        "measured": True,
        "provider": "CPUExecutionProvider",
        "max_abs_error_vs_torch": float(np.abs(got - torch_ref).max()),
        "max_abs_error_vs_fp32": float(np.abs(got - fp32).max()),
        "rel_l2_error_vs_fp32": rel,
        "tolerance_rel_l2": VARIANT_TOLERANCE[spec.precision],
        "latency_ms": {str(b): v for b, v in lat.items()},
        "fp32_latency_ms": {str(b): v for b, v in fp32_latency.items()},
        "speedup": {str(b): round(fp32_latency[b] / lat[b], 2) for b in lat if b in fp32_latency},
    }
    if not np.isfinite(got).all() or rel > VARIANT_TOLERANCE[spec.precision]:
        raise VerificationError(
            f"{spec.precision} variant differs from fp32: relative L2 error {rel:.3g} > "
            f"{VARIANT_TOLERANCE[spec.precision]:g}; keep the fp32 version",
            max_error=result["max_abs_error_vs_fp32"], tolerance=VARIANT_TOLERANCE[spec.precision],
        )
    return result
