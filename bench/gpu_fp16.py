"""fp16 against fp32 versions of one model on the CUDA provider: output error and latency.

    python -m bench.gpu_fp16 REPO   # REPO/bench/1 = fp32, REPO/bench/2 = fp16 (lstm-export --fp16)

Recorded on a lent H100 in bench/results/gpu-h100-fp16.log.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from app import contract
from app.contract import ModelSpec


def main() -> None:
    import onnxruntime as ort

    repo = sys.argv[1]
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    s32 = ort.InferenceSession(f"{repo}/bench/1/model.onnx", providers=providers)
    s16 = ort.InferenceSession(f"{repo}/bench/2/model.onnx", providers=providers)
    spec = ModelSpec.from_metadata(dict(s16.get_modelmeta().custom_metadata_map))
    print("providers", s16.get_providers(), "precision", spec.precision)
    rng = np.random.default_rng(0)
    for b in (1, 64, 256):
        feeds = contract.feeds(spec, rng.standard_normal((b, 50, spec.input_size)))
        o32, o16 = s32.run(["output"], feeds)[0], s16.run(["output"], feeds)[0]
        row = {"batch": b, "max_abs_err": float(np.abs(o16 - o32).max()),
               "rel_l2": float(np.linalg.norm(o16 - o32) / np.linalg.norm(o32))}
        for name, sess in (("fp32", s32), ("fp16", s16)):
            for _ in range(5):
                sess.run(["output"], feeds)
            lat = []
            for _ in range(50):
                t0 = time.perf_counter()
                sess.run(["output"], feeds)
                lat.append(time.perf_counter() - t0)
            row[f"{name}_p50_ms"] = float(np.median(lat) * 1e3)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
