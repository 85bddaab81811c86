"""Raw ONNX Runtime on the CUDA execution provider: the batch curve with plain ``run``, with
IOBinding (inputs and outputs already on the device), and with CUDA graphs captured per fixed
shape bucket (one session per bucket, ``enable_cuda_graph``, bound buffers replayed).

    python -m bench.gpu MODEL --out gpu.json [--batches 1,8,32,128,512] [--seconds 1]

Needs onnxruntime-gpu and a GPU. The model's time axis is fixed at 50 steps (the issue's model).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def timed(fn, seconds: float) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    for _ in range(5):
        fn()
    lat = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    return len(lat) / sum(lat), float(np.percentile(lat, 50) * 1000)


def main() -> None:
    import onnxruntime as ort

    from app import contract  # stdlib + numpy only(the device has no server deps)
    from app.contract import ModelSpec

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--out")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64,128,256,512,1024")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--length", type=int, default=50)
    args = ap.parse_args()
    res: dict = {"ort": ort.__version__, "available": ort.get_available_providers(), "curve": [], "errors": []}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    prov = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    sess = ort.InferenceSession(args.model, sess_options=opts, providers=prov)
    res["session_providers"] = sess.get_providers()
    spec = ModelSpec.from_metadata(dict(sess.get_modelmeta().custom_metadata_map))
    rng = np.random.default_rng(0)
    for b in [int(v) for v in args.batches.split(",")]:
        x = rng.standard_normal((b, args.length, spec.input_size)).astype(np.float32)
        feeds = contract.feeds(spec, x)
        row: dict = {"batch": b}
        calls, p50 = timed(lambda: sess.run(["output"], feeds), args.seconds)
        row.update(run_seq_s=calls * b, run_p50_ms=p50)
        try:  # IOBinding: inputs copied to the device once, output left there
            io = sess.io_binding()
            dev = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for k, v in feeds.items()}
            for k, v in dev.items():
                io.bind_ortvalue_input(k, v)
            io.bind_output("output", "cuda", 0)
            calls, p50 = timed(lambda: sess.run_with_iobinding(io), args.seconds)
            row.update(iobinding_seq_s=calls * b, iobinding_p50_ms=p50)
        except Exception as exc:
            res["errors"].append(f"iobinding b={b}: {exc!r}"[:300])
        try:  # CUDA graph for this fixed shape bucket
            gs = ort.InferenceSession(args.model, sess_options=opts,
                                      providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"])
            io = gs.io_binding()
            dev = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for k, v in feeds.items()}
            for k, v in dev.items():
                io.bind_ortvalue_input(k, v)
            outs = {o.name: ort.OrtValue.ortvalue_from_shape_and_type(
                [b, spec.output_size] if o.name == "output" else [spec.num_layers, b, spec.hidden_size], np.float32, "cuda", 0)
                for o in gs.get_outputs()}
            for k, v in outs.items():
                io.bind_ortvalue_output(k, v)
            gs.run_with_iobinding(io)  # captures
            calls, p50 = timed(lambda: gs.run_with_iobinding(io), args.seconds)
            row.update(cuda_graph_seq_s=calls * b, cuda_graph_p50_ms=p50)
            ref = sess.run(["output"], feeds)[0]
            row["cuda_graph_max_abs_err"] = float(np.abs(outs["output"].numpy() - ref).max())
        except Exception as exc:
            res["errors"].append(f"cuda graph b={b}: {exc!r}"[:300])
        res["curve"].append(row)
        print(json.dumps(row), flush=True)
    text = json.dumps(res, indent=1)
    if args.out:
        open(args.out, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
