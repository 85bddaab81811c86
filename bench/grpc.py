"""``python -m bench.grpc``: gRPC against REST in one run, against one server (demo model).

* unary: 32 concurrent clients for ``--seconds``, gRPC ``ModelInfer`` against REST with binary
  tensors (Triton's extension), then a lone client's p50 for both; both send bodies serialized
  once up front, so the client's own cost stays small and alike;
* streaming: N streams (``--streams``, default 16 and 128) each sending 1-step chunks of a
  server-kept sequence (``sequence_id``): over one ``ModelStreamInfer`` stream each, over REST
  requests, and over REST re-sending the whole history (no server-kept state); steps per second
  and p50/p99 per chunk. Sequences restart every ``HISTORY`` steps.

The client runs in this process on the same machine as the server: on a small machine it takes
CPU the server would use, alike for both transports. Writes bench/results/grpc.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
from tritonclient.grpc import service_pb2 as pb

from . import server as srvmod

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODEL, FEATURES, STEPS, HISTORY = "demo", 4, 12, 32
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def _same(b: bytes) -> bytes:
    return b


def grpc_body(x: np.ndarray, seq: int = 0, start: bool = False, end: bool = False) -> bytes:
    req = pb.ModelInferRequest(model_name=MODEL)
    req.inputs.add(name="input", datatype="FP32", shape=x.shape)
    req.outputs.add(name="output")
    req.raw_input_contents.append(x.tobytes())
    if seq:
        req.parameters["sequence_id"].int64_param = seq
        req.parameters["sequence_start"].bool_param = start
        req.parameters["sequence_end"].bool_param = end
    return req.SerializeToString()


def http_body(x: np.ndarray, seq: int = 0, start: bool = False, end: bool = False) -> tuple[bytes, dict[str, str]]:
    doc: dict = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                             "parameters": {"binary_data_size": x.nbytes}}],
                 "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}
    if seq:
        doc["parameters"] = {"sequence_id": seq, "sequence_start": start, "sequence_end": end}
    header = orjson.dumps(doc)
    return header + x.tobytes(), {"inference-header-content-length": str(len(header)),
                                  "content-type": "application/octet-stream"}


def summary(lat: list[float], seconds: float) -> dict[str, float]:
    a = np.asarray(lat) * 1000
    return {"per_s": round(len(lat) / seconds, 1), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "n": len(lat)}


async def measured(srv: srvmod.Server, phase) -> dict[str, float]:
    """A phase's summary plus the server's own CPU per answer (all its processes), which the
    client's cost in this process does not blur."""
    before = srv.cpu_s()
    result = await phase
    result["server_cpu_ms"] = round((srv.cpu_s() - before) * 1000 / max(result["n"], 1), 3)
    return result


async def closed_loop(clients: int, seconds: float, one) -> dict[str, float]:
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            await one(k)
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return summary(lat, time.perf_counter() - t0)


async def unary(srv: srvmod.Server, clients: int, seconds: float) -> dict[str, dict]:
    x = np.random.default_rng(0).standard_normal((1, STEPS, FEATURES)).astype(np.float32)
    gbody = grpc_body(x)
    hbody, headers = http_body(x)
    out = {}
    channels = [grpc.aio.insecure_channel(srv.grpc_target) for _ in range(min(clients, 8))]
    calls = [c.unary_unary(INFER, request_serializer=_same, response_deserializer=_same) for c in channels]
    async with httpx.AsyncClient(base_url=srv.url, limits=httpx.Limits(max_connections=clients), timeout=60) as http:
        async def g(k: int) -> None:
            await calls[k % len(calls)](gbody)

        async def h(k: int) -> None:
            r = await http.post(f"/v2/models/{MODEL}/infer", content=hbody, headers=headers)
            r.raise_for_status()

        for name, fn in (("http-binary", h), ("grpc", g)):
            await closed_loop(clients, 1.0, fn)  # warm connections
            out[f"{name} x{clients}"] = await measured(srv, closed_loop(clients, seconds, fn))
        for name, fn in (("http-binary", h), ("grpc", g)):
            out[f"{name} lone"] = await measured(srv, closed_loop(1, seconds / 2, fn))
    for c in channels:
        await c.close()
    return out


async def streaming(srv: srvmod.Server, streams: int, seconds: float) -> dict[str, dict]:
    rng = np.random.default_rng(1)
    steps = rng.standard_normal((HISTORY, 1, 1, FEATURES)).astype(np.float32)
    out = {}
    base = 1_000_000 * streams

    async def over_grpc() -> dict[str, float]:
        lat: list[float] = []
        stop = time.perf_counter() + seconds
        channels = [grpc.aio.insecure_channel(srv.grpc_target) for _ in range(min(streams, 8))]

        async def one(k: int) -> None:
            call = channels[k % len(channels)].stream_stream(STREAM, request_serializer=_same, response_deserializer=_same)()
            i, seq = 0, base + k * 10_000
            while time.perf_counter() < stop:
                t = time.perf_counter()
                await call.write(grpc_body(steps[i % HISTORY], seq + i // HISTORY, i % HISTORY == 0, i % HISTORY == HISTORY - 1))
                answer = pb.ModelStreamInferResponse.FromString(await call.read())
                assert not answer.error_message, answer.error_message
                lat.append(time.perf_counter() - t)
                i += 1
            await call.done_writing()
            await call.wait_for_connection()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(streams)))
        for c in channels:
            await c.close()
        return summary(lat, time.perf_counter() - t0)

    async def over_http(history: bool) -> dict[str, float]:
        lat: list[float] = []
        stop = time.perf_counter() + seconds
        async with httpx.AsyncClient(base_url=srv.url, limits=httpx.Limits(max_connections=streams), timeout=60) as http:
            async def one(k: int) -> None:
                i, seq = 0, base + 500_000 + k * 10_000
                while time.perf_counter() < stop:
                    j = i % HISTORY
                    if history:
                        body, headers = http_body(steps[: j + 1, 0, 0][None])
                    else:
                        body, headers = http_body(steps[j], seq + i // HISTORY, j == 0, j == HISTORY - 1)
                    t = time.perf_counter()
                    r = await http.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
                    r.raise_for_status()
                    lat.append(time.perf_counter() - t)
                    i += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(one(k) for k in range(streams)))
            return summary(lat, time.perf_counter() - t0)

    out[f"grpc stream x{streams}"] = await measured(srv, over_grpc())
    out[f"http sequence_id x{streams}"] = await measured(srv, over_http(False))
    out[f"http re-send history x{streams}"] = await measured(srv, over_http(True))
    return out


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5))
    a.barh(names, [results[n]["per_s"] for n in names])
    a.set_xlabel("answers per second (chunks for streams)")
    b.barh(names, [results[n]["p50_ms"] for n in names], label="p50")
    b.barh(names, [results[n]["p99_ms"] - results[n]["p50_ms"] for n in names],
           left=[results[n]["p50_ms"] for n in names], alpha=0.4, label="p99")
    b.set_xscale("log")
    b.set_xlabel("latency per answer, ms")
    b.legend()
    fig.suptitle("lstm-serve: gRPC vs REST, one run (demo model, 2-core shared machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--streams", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--out", default="grpc")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        srv = srvmod.start(ROOT / "models", Path(logs), {"access_log": "false"})
        try:
            load_before = os.getloadavg()
            results = asyncio.run(unary(srv, args.clients, args.seconds))
            for n in args.streams:
                results.update(asyncio.run(streaming(srv, n, args.seconds)))
            load_after = os.getloadavg()
        finally:
            srv.stop()
    typed = f"python -m bench.grpc --seconds {args.seconds:g} --clients {args.clients} --streams " + " ".join(map(str, args.streams))
    doc = {"command": typed,
           "loadavg_before": load_before, "loadavg_after": load_after, "cpus": os.cpu_count(), "results": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(doc, indent=1))
    lines = [f"# gRPC vs REST ({doc['command']})", "",
             f"{os.cpu_count()} CPUs shared with the client and other work; load average before "
             f"{load_before[0]:.2f}, after {load_after[0]:.2f}.", "",
             "| mode | answers/s | p50 ms | p99 ms | answers | server CPU ms per answer |", "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['per_s']} | {v['p50_ms']} | {v['p99_ms']} | {v['n']} | {v['server_cpu_ms']} |"
              for k, v in results.items()]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    plot(results, RESULTS / f"{args.out}.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
