"""The server on the CUDA execution provider under closed-loop load, against raw ONNX Runtime
on CUDA in the same run (the ``bench/results/gpu-h100.json`` numbers).

    python -m bench.gpu_serve --model-repo REPO --name bench --out OUTDIR

Needs onnxruntime-gpu, a GPU and the server's dependencies. The load generator is several
processes, each an asyncio httpx client with keep-alive connections (a GPU host has cores to
spare; wrk may not be installed there). Raw figures are ``InferenceSession.run`` at the batch
sizes the server can form; bench.gpu adds IOBinding and CUDA graphs to that curve.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import time
from pathlib import Path

import httpx
import numpy as np

from app import contract
from app.contract import ModelSpec
from app.testing import start_server

from .gpu import timed

T = 50


def raw_curve(path: Path, batches: list[int], seconds: float) -> list[dict]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    spec = ModelSpec.from_metadata(dict(sess.get_modelmeta().custom_metadata_map))
    rows = []
    for b in batches:
        feeds = contract.feeds(spec, np.random.default_rng(b).standard_normal((b, T, spec.input_size)))
        calls, p50 = timed(lambda feeds=feeds: sess.run(["output"], feeds), seconds)
        rows.append({"batch": b, "run_seq_s": calls * b, "run_p50_ms": p50})
    return rows


def _body(features: int, binary: bool) -> tuple[bytes, dict[str, str]]:
    x = np.random.default_rng(0).standard_normal((1, T, features)).astype(np.float32)
    if not binary:
        doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, T, features], "data": x.ravel().tolist()}],
               "outputs": [{"name": "output"}]}
        return json.dumps(doc).encode(), {"content-type": "application/json"}
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, T, features],
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}).encode()
    return header + x.tobytes(), {"inference-header-content-length": str(len(header)),
                                  "content-type": "application/octet-stream"}


def _client(url: str, body: bytes, headers: dict, conns: int, seconds: float, q: mp.Queue) -> None:
    async def go() -> list[float]:
        lat: list[float] = []
        end = time.perf_counter() + seconds
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=conns), timeout=30) as c:
            async def loop() -> None:
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    if (await c.post(url, content=body, headers=headers)).status_code == 200:
                        lat.append(time.perf_counter() - t0)
            await asyncio.gather(*(loop() for _ in range(conns)))
        return lat

    q.put(asyncio.run(go()))


def _batches(url: str) -> tuple[float, float]:
    """(batches, sequences) so far, from the server's own batch-size histogram."""
    text = httpx.get(f"{url}/metrics").text
    total = lambda name: sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name))  # noqa: E731
    return total("lstm_serve_batch_size_count"), total("lstm_serve_batch_size_sum")


def load(url: str, name: str, features: int, clients: int, binary: bool, seconds: float, procs: int) -> dict:
    body, headers = _body(features, binary)
    b0, s0 = _batches(url)
    q: mp.Queue = mp.Queue()
    procs = min(procs, clients)
    per = [clients // procs + (i < clients % procs) for i in range(procs)]
    ps = [mp.Process(target=_client, args=(f"{url}/v2/models/{name}/infer", body, headers, c, seconds, q)) for c in per]
    for p in ps:
        p.start()
    lat = sorted(x for _ in ps for x in q.get())
    for p in ps:
        p.join()
    b1, s1 = _batches(url)
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3  # noqa: E731
    return {"clients": clients, "binary": binary, "seq_s": len(lat) / seconds, "p50_ms": pct(0.5),
            "p99_ms": pct(0.99), "mean_batch": (s1 - s0) / (b1 - b0) if b1 > b0 else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-repo", type=Path, required=True)
    ap.add_argument("--name", default="bench")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--procs", type=int, default=6)
    args = ap.parse_args()
    import onnxruntime as ort

    path = args.model_repo / args.name / "1" / "model.onnx"
    features = ModelSpec.from_metadata(
        dict(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map)
    ).input_size
    report: dict = {"onnxruntime": ort.__version__, "raw_before": raw_curve(path, [1, 8, 32, 64, 128, 256], 1.0)}
    report["server"] = []
    for label, settings, runs in [
        ("batching on (max 256)", {"max_batch_size": 256, "max_queue_size": 2048}, [(1, True), (32, True), (128, True), (128, False)]),
        ("batching off", {"max_batch_size": 1, "max_queue_size": 2048}, [(128, True)]),
    ]:
        srv = start_server(args.model_repo, args.out / "logs", providers="cuda", access_log="false", **settings)
        try:
            for clients, binary in runs:
                row = {"setting": label, **load(srv.url, args.name, features, clients, binary, args.seconds, args.procs)}
                report["server"].append(row)
                print(json.dumps(row), flush=True)
        finally:
            srv.stop()
    report["raw_after"] = raw_curve(path, [1, 8, 32, 64, 128, 256], 1.0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-serve.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
