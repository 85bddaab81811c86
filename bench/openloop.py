"""Open-loop load: requests sent at scheduled times (Poisson arrivals at a fixed rate), whether
or not earlier ones were answered, with latency counted from the *scheduled* send time, so a
stalled server is charged for the requests it kept waiting (no coordinated omission).

    python -m bench.openloop URL --rate 1000 --seconds 10 --bodies DIR [--conns 256]
    python -m bench.openloop URL --closed 32 --seconds 5          # its own ceiling (GET)

Raw asyncio sockets (uvloop when present), HTTP/1.1 keep-alive; a request waits for a free
connection only when all ``--conns`` are busy (that wait counts in its latency). With
``--closed N`` it instead keeps N requests in flight (GET when no bodies are given), which is
how its own ceiling is measured against a trivial endpoint. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np


class Conn(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.need = -1
        self.status = 0
        self.started = 0.0
        self.on_done = None

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def send(self, req: bytes, started: float, on_done) -> None:  # type: ignore[no-untyped-def]
        self.started, self.on_done, self.need = started, on_done, -1
        self.buf.clear()
        assert self.transport is not None
        self.transport.write(req)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            self.status = int(head[9:12])
            i = head.find(b"content-length:")
            length = int(head[i + 15 : head.find(b"\r\n", i)]) if i >= 0 else 0
            self.need = end + 4 + length
        if len(self.buf) >= self.need:
            cb, self.on_done = self.on_done, None
            if cb is not None:
                cb(self, self.started, self.status)

    def connection_lost(self, exc) -> None:  # type: ignore[no-untyped-def]
        self.pool.lost(self)


class Pool:
    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.idle: list[Conn] = []
        self.count = 0
        self.errors = 0

    def put(self, conn: Conn) -> None:
        self.idle.append(conn)

    def lost(self, conn: Conn) -> None:
        self.count -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.on_done is not None:
            self.errors += 1


def build_requests(url: str, bodies: Path | None) -> list[bytes]:
    u = urlsplit(url)
    host = f"{u.hostname}:{u.port}"
    if bodies is None:
        return [f"GET {u.path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()]
    reqs = []
    for i, line in enumerate((bodies / "hlen.txt").read_text().split(), 1):
        body = (bodies / f"body{i}.bin").read_bytes()
        extra = (
            f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {line}\r\n"
            if int(line) > 0 else "Content-Type: application/json\r\n"
        )
        head = f"POST {u.path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
        reqs.append(head.encode() + body)
    return reqs


async def run(args: argparse.Namespace) -> dict:
    u = urlsplit(args.url)
    reqs = build_requests(args.url, Path(args.bodies) if args.bodies else None)
    pool = Pool(u.hostname or "127.0.0.1", u.port or 80, args.conns)
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    codes: dict[int, int] = {}
    waiting: deque[float] = deque()  # scheduled times of requests that found no free connection
    state = {"sent": 0, "inflight": 0, "next": 0}
    finished = asyncio.Event()
    rng = random.Random(0)

    def nxt() -> bytes:
        state["next"] = (state["next"] + 1) % len(reqs)
        return reqs[state["next"]]

    def done(conn: Conn, started: float, status: int) -> None:
        now = time.perf_counter()
        lat.append(now - started)
        codes[status] = codes.get(status, 0) + 1
        state["inflight"] -= 1
        if waiting:
            state["inflight"] += 1
            conn.send(nxt(), waiting.popleft(), done)
        elif args.closed and now < stop:
            state["inflight"] += 1
            conn.send(nxt(), now, done)
        else:
            pool.put(conn)
        if now >= stop and state["inflight"] == 0 and not waiting:
            finished.set()

    async def open_and_send(scheduled: float) -> None:
        pool.count += 1
        _, conn = await loop.create_connection(lambda: Conn(pool), pool.host, pool.port)
        conn.send(nxt(), scheduled, done)

    def fire(scheduled: float) -> None:
        state["sent"] += 1
        if pool.idle:
            state["inflight"] += 1
            pool.idle.pop().send(nxt(), scheduled, done)
        elif pool.count < pool.limit:
            state["inflight"] += 1
            loop.create_task(open_and_send(scheduled))
        else:
            waiting.append(scheduled)

    t0 = time.perf_counter()
    stop = t0 + args.seconds
    if args.closed:
        for _ in range(args.closed):
            fire(time.perf_counter())
        await asyncio.sleep(args.seconds)
    else:
        t = t0
        while t < stop:
            now = time.perf_counter()
            while t <= now and t < stop:
                fire(t)
                t += rng.expovariate(args.rate) if args.poisson else 1.0 / args.rate
            await asyncio.sleep(max(0.0, t - time.perf_counter()))
    try:
        await asyncio.wait_for(finished.wait(), args.seconds + 30)
    except TimeoutError:
        pass
    wall = time.perf_counter() - t0
    a = np.asarray(lat) * 1000 if lat else np.array([np.nan])
    return {
        "offered_rps": args.rate if not args.closed else None,
        "sent": state["sent"],
        "answered": len(lat),
        "achieved_rps": len(lat) / wall,
        "wall_s": wall,
        "codes": {str(k): v for k, v in codes.items()},
        "conn_errors": pool.errors,
        "connections": pool.count,
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(np.max(a)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--bodies")
    ap.add_argument("--conns", type=int, default=256)
    ap.add_argument("--closed", type=int, default=0, help="keep N requests in flight instead")
    ap.add_argument("--constant", dest="poisson", action="store_false", help="constant spacing")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    c0 = time.process_time()
    res = asyncio.run(run(args))
    res["cpu_s"] = time.process_time() - c0
    print(json.dumps(res))


if __name__ == "__main__":
    main()
