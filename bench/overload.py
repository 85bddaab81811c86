"""Overload, with figures (issue 15, item 5): open-loop load at a multiple of the measured
saturation rate against a server with a small queue.

    python -m bench.overload [--factor 4] [--seconds 10] [--queue 16] [--steps 400] [--rows 8]

1. Starts a server on the demo model (127.0.0.1) with ``max_queue_size`` = ``--queue``.
2. Saturation: the most 200s per second of a closed loop of 2, 4, 8 or 16 connections (2 s each).
3. Open loop: Poisson arrivals at ``--factor`` x saturation for ``--seconds``, each request
   one of 64 fixed requests of ``--rows`` sequences of ragged lengths up to ``--steps`` (binary
   tensors in, JSON out; heavy enough per request that a Python client on the same two cores
   can offer 4x what the server serves),
   latency counted from the scheduled send time (no coordinated omission).
4. Checks: every refusal is a complete 503 with Retry-After (a reset or a truncated answer
   counts as lost), every admitted answer equals raw ONNX Runtime on each sequence alone
   (<= 1e-5), the server's RSS before, peak and after, and recovery: 1 s after the load, 50
   requests in a row are all answered 200 near the idle latency, readiness is true and the
   queue is empty.

Prints one JSON object with the figures and whether each target held.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import threading
import time

import httpx
import numpy as np

from app.testing import ROOT, start_server

from .scratch import run_scratch

TOL = 1e-5


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def build_requests(rows: int, steps: int, count: int = 64) -> tuple[list[bytes], list[np.ndarray]]:
    """``count`` requests (raw HTTP) and, for each, the raw-ORT answer of every sequence alone."""
    import onnxruntime as ort

    from app.contract import ModelSpec, feeds

    path = sorted((ROOT / "models" / "demo").glob("*/model.onnx"))[-1]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = ModelSpec.from_metadata(dict(sess.get_modelmeta().custom_metadata_map))
    rng = np.random.default_rng(0)
    raws, wants = [], []
    for _ in range(count):
        lengths = rng.integers(1, steps + 1, rows)
        x = rng.standard_normal((rows, steps, spec.input_size)).astype(np.float32)
        want = np.stack([sess.run(["output"], feeds(spec, x[i : i + 1, : lengths[i]]))[0][0] for i in range(rows)])
        # binary tensor extension (tritonclient's default): cheap to send, so the client keeps up
        blob = x.tobytes()
        doc = {"inputs": [
            {"name": "input", "datatype": "FP32", "shape": list(x.shape), "parameters": {"binary_data_size": len(blob)}},
            {"name": "sequence_lens", "datatype": "INT32", "shape": [rows], "data": lengths.tolist()},
        ], "outputs": [{"name": "output"}]}
        header = json.dumps(doc).encode()
        body = header + blob
        raws.append(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                    b"Inference-Header-Content-Length: " + str(len(header)).encode() + b"\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wants.append(want)
    return raws, wants


class Pool:
    """Keep-alive connections, opened on demand up to ``cap``; a request waits when all are busy."""

    def __init__(self, port: int, cap: int) -> None:
        self.port, self.cap, self.open = port, cap, 0
        self.free: asyncio.Queue = asyncio.Queue()

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.free.empty() and self.open < self.cap:
            self.open += 1
            try:
                return await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.open -= 1
                raise
        return await self.free.get()

    def put(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.free.put_nowait(conn)

    def drop(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.open -= 1
        conn[1].close()


async def exchange(pool: Pool, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body); status 0 for a reset, a refused connection or a truncated answer."""
    try:
        conn = await pool.get()
    except OSError:
        return 0, {}, b""
    reader, writer = conn
    try:
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pool.drop(conn)
        return 0, {}, b""
    if headers.get("connection", "").lower() == "close":
        pool.drop(conn)
    else:
        pool.put(conn)
    return int(lines[0].split()[1]), headers, body


async def closed_loop(port: int, raws: list[bytes], conns: int, seconds: float) -> float:
    pool = Pool(port, conns)
    ok = 0
    end = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal ok
        i = k
        while time.perf_counter() < end:
            status, _, _ = await exchange(pool, raws[i % len(raws)])
            ok += status == 200
            i += conns

    await asyncio.gather(*(worker(k) for k in range(conns)))
    return ok / seconds


async def open_loop(port: int, raws: list[bytes], rate: float, seconds: float, conns: int) -> list[tuple]:
    pool = Pool(port, conns)
    rng = random.Random(1)
    results: list[tuple] = []
    tasks = []
    start = time.perf_counter()
    t = 0.0
    i = 0

    async def one(idx: int, scheduled: float) -> None:
        status, headers, body = await exchange(pool, raws[idx % len(raws)])
        results.append((idx, status, time.perf_counter() - scheduled, "retry-after" in headers, body if status == 200 else b""))

    while t < seconds:
        delay = start + t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, start + t)))
        i += 1
        t += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    return results


def post(client: httpx.Client, raw: bytes) -> httpx.Response:
    """Send one of the prepared raw requests with httpx (same headers, same body)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[2:] if not line.startswith("Content-Length"))
    return client.post("/v2/models/demo/infer", content=body, headers=headers)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] if s else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--factor", type=float, default=4.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--queue", type=int, default=16)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--conns", type=int, default=512)
    ap.add_argument("--probe-seconds", type=float, default=2.0, help="each closed loop of the saturation probe")
    args = ap.parse_args()

    raws, wants = build_requests(args.rows, args.steps)
    with run_scratch("overload-") as logs:
        srv = start_server(ROOT / "models", logs, max_queue_size=args.queue, max_batch_size=min(args.queue, 32),
                           access_log=False, max_connections=args.conns + 64)
        out: dict[str, object] = {"settings": {"max_queue_size": args.queue, "rows_per_request": args.rows,
                                               "max_steps": args.steps, "seconds": args.seconds, "factor": args.factor}}
        try:
            with httpx.Client(base_url=srv.url, timeout=10) as c:
                for _ in range(20):
                    assert post(c, raws[0]).status_code == 200
                idle = []
                for k in range(50):
                    t0 = time.perf_counter()
                    post(c, raws[k % 64])
                    idle.append(time.perf_counter() - t0)
            # the most 200s per second any closed loop gets (more connections only add refusals)
            closed = {c: asyncio.run(closed_loop(srv.port, raws, c, args.probe_seconds)) for c in (2, 4, 8, 16)}
            saturation = max(closed.values())
            out["closed_loop_rps"] = {str(c): round(r, 1) for c, r in closed.items()}
            rate = args.factor * saturation
            rss_before = rss_mb(srv.pid)
            peak = [rss_before]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak.append(rss_mb(srv.pid))
                    time.sleep(0.1)

            sampler = threading.Thread(target=sample)
            sampler.start()
            t0 = time.perf_counter()
            results = asyncio.run(open_loop(srv.port, raws, rate, args.seconds, args.conns))
            load_s = time.perf_counter() - t0
            stop.set()
            sampler.join()
            time.sleep(1.0)
            rss_after = rss_mb(srv.pid)

            admitted = [r for r in results if r[1] == 200]
            refused = [r for r in results if r[1] == 503]
            lost = [r for r in results if r[1] not in (200, 503)]
            wrong = 0
            for idx, _, _, _, body in admitted:
                doc = json.loads(body)
                got = np.asarray(doc["outputs"][0]["data"], np.float32).reshape(doc["outputs"][0]["shape"])
                wrong += not np.allclose(got, wants[idx % len(wants)], atol=TOL, rtol=0)
            # recovery
            with httpx.Client(base_url=srv.url, timeout=10) as c:
                after, codes = [], []
                for k in range(50):
                    t1 = time.perf_counter()
                    codes.append(post(c, raws[k % 64]).status_code)
                    after.append(time.perf_counter() - t1)
                ready = c.get("/v2/health/ready").status_code
                depth = [line for line in c.get("/metrics").text.splitlines() if line.startswith("lstm_serve_queue_depth{")]
            ms = 1000.0
            out.update({
                "saturation_rps": round(saturation, 1),
                "offered_rps": round(len(results) / load_s, 1),
                "requests": len(results),
                "admitted": len(admitted),
                "refused_503": len(refused),
                "lost": len(lost),
                "lost_statuses": sorted({r[1] for r in lost}),
                "refused_without_retry_after": sum(not r[3] for r in refused),
                "admitted_wrong": wrong,
                "admitted_p50_ms": round(pct([r[2] for r in admitted], 0.5) * ms, 1),
                "admitted_p99_ms": round(pct([r[2] for r in admitted], 0.99) * ms, 1),
                "refused_p50_ms": round(pct([r[2] for r in refused], 0.5) * ms, 1),
                "refused_p99_ms": round(pct([r[2] for r in refused], 0.99) * ms, 1),
                "rss_mb": {"before": round(rss_before, 1), "peak": round(max(peak), 1), "after": round(rss_after, 1)},
                "idle_p50_ms": round(statistics.median(idle) * ms, 2),
                "recovery": {"codes": sorted(set(codes)), "p50_ms": round(statistics.median(after) * ms, 2),
                             "max_ms": round(max(after) * ms, 2), "ready": ready, "queue_depth": depth},
            })
            out["targets"] = {
                "no_request_lost": not lost,
                "every_503_has_retry_after": out["refused_without_retry_after"] == 0,
                "refused_p99_le_1s": out["refused_p99_ms"] <= 1000,
                "admitted_p99_le_3s": out["admitted_p99_ms"] <= 3000,
                "admitted_exact": wrong == 0 and len(admitted) > 0,
                "rss_growth_le_300mb": max(peak) - rss_before <= 300,
                "recovered": set(codes) == {200} and ready == 200 and all(line.endswith(" 0.0") for line in depth),
            }
        finally:
            srv.stop()
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
