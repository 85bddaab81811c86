"""Running an exported graph in ONNX Runtime: sessions, feeds, latency. No torch here.

Also runnable as ``python -m export.ortrun MODEL INPUTS.npz OUTPUTS.npz`` so that a graph which
might crash ONNX Runtime (fp16 on the CPU provider) is measured in a child process: a crash
there is reported, not inherited by the exporter.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import numpy as np
import onnxruntime as ort

from app import contract as C


def session(model: bytes | str, *, threads: int = 1, providers: list[str] | None = None
            ) -> ort.InferenceSession:
    """A session with fixed threads (timings comparable across exports), spinning off."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=providers or ["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, spec: C.ModelSpec, x: np.ndarray, lengths: np.ndarray,
        h0: np.ndarray | None = None, c0: np.ndarray | None = None) -> dict[str, np.ndarray]:
    values = sess.run(list(spec.output_names), C.feeds(spec, x, lengths, h0, c0))
    return dict(zip(spec.output_names, values))


def latency(sess: ort.InferenceSession, spec: C.ModelSpec, *, length: int, batch: int,
            runs: int, seed: int = 0) -> dict[str, float]:
    """Median wall time of ``runs`` calls on a full batch of ``length`` steps (after warm-up)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, length, spec.input_size)).astype(np.float32)
    f = C.feeds(spec, x)
    names = list(spec.output_names)
    for _ in range(3):
        sess.run(names, f)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(names, f)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "batch": batch,
        "length": length,
        "runs": runs,
        "median_ms": round(median * 1e3, 4),
        "sequences_per_s": round(batch / median, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: run cases and latency for a model file, write results to an npz."""
    args = sys.argv[1:] if argv is None else argv
    model_path, in_path, out_path = args[:3]
    data = np.load(in_path, allow_pickle=False)
    sess = session(model_path)
    spec = C.ModelSpec.from_metadata(dict(sess.get_modelmeta().custom_metadata_map))
    results: dict[str, Any] = {}
    n = int(data["n_cases"])
    for i in range(n):
        h0 = data[f"h0_{i}"] if f"h0_{i}" in data else None
        c0 = data[f"c0_{i}"] if f"c0_{i}" in data else None
        outs = run(sess, spec, data[f"x_{i}"], data[f"lengths_{i}"], h0, c0)
        for name, value in outs.items():
            results[f"{name}_{i}"] = value
    length = int(data["latency_length"])
    for batch, runs in zip(data["latency_batches"], data["latency_runs"]):
        if runs > 0:
            results[f"latency_{int(batch)}"] = np.array(
                latency(sess, spec, length=length, batch=int(batch), runs=int(runs))["median_ms"]
            )
    np.savez(out_path, **results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
