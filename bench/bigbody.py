"""How long a large request body stalls everyone else (issue 15, items 1-2).

    python -m bench.bigbody [--mb 16] [--rounds 5] [--valid]
    python -m bench.bigbody --stalled 500

Starts a server on the demo model (127.0.0.1, limits raised so the big body is *valid* and
runs), then, on one keep-alive connection each, probes ``/v2/health/ready`` and a one-sequence
inference back to back while another client sends JSON bodies of ``--mb`` MB (3.9 M numbers at
16 MB). Reports the probes' latency while a big body was in flight, against an idle baseline.

With ``--stalled N``: instead of big bodies, N uploads that declare 1000 bytes and send 10
stay open while the probes run. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time

import httpx
import numpy as np

from app.testing import ROOT, start_server

from .scratch import run_scratch

SMALL = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 5, 4], "data": [0.5] * 20}]}


def big_body(mb: float, valid: bool) -> bytes:
    """Values like "3.1," (4 bytes each), the issue's 15.6 MB of 3.9 M numbers at 16 MB; shape
    [32, t, 4] when ``valid`` (served with raised limits), else [n, 1, 4], which the default
    max_batch_size refuses, as the issue's body was refused after being decoded."""
    count = int(mb * 1e6 / 4) // 4 * 4
    n, t = (32, count // 128) if valid else (count // 4, 1)
    data = np.round(np.random.default_rng(0).random(n * t * 4) * 9, 1)
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [n, t, 4], "data": data.tolist()}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def probe(url: str, stop: threading.Event, out: list[tuple[float, float, str]]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        client.get("/v2/health/ready")
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            if i % 2:
                r = client.post("/v2/models/demo/infer", json=SMALL)
                kind = "infer"
            else:
                r = client.get("/v2/health/ready")
                kind = "ready"
            t1 = time.perf_counter()
            assert r.status_code == 200, r.text
            out.append((t0, t1 - t0, kind))
            i += 1
            time.sleep(0.002)


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "n": len(s),
        "p50_ms": round(statistics.median(s) * 1000, 2),
        "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 2),
        "max_ms": round(s[-1] * 1000, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=16.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--stalled", type=int, default=0)
    ap.add_argument("--valid", action="store_true", help="a body the server runs (limits raised, 2 batches in flight)")
    args = ap.parse_args()
    with run_scratch("bigbody-") as logs:
        body = big_body(args.mb, args.valid) if not args.stalled else b""
        raised = {"max_sequence_length": 1_000_000, "max_batches_in_flight": 2} if args.valid else {}
        srv = start_server(
            ROOT / "models", logs, max_request_bytes=max(len(body) + 1024, 16 * 2**20), body_timeout_s=60,
            max_connections=args.stalled + 64, access_log=False, **raised,
        )
        result: dict[str, object] = {"body_bytes": len(body), "stalled": args.stalled}
        try:
            stop = threading.Event()
            samples: list[tuple[float, float, str]] = []
            t = threading.Thread(target=probe, args=(srv.url, stop, samples))
            t.start()
            time.sleep(1.0)
            result["idle"] = summary([d for _, d, _ in samples])
            mark = len(samples)
            windows: list[tuple[float, float]] = []
            socks = []
            if args.stalled:
                head = (b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1000\r\n\r\n{\"inputs\":")
                for _ in range(args.stalled):
                    s = socket.create_connection(("127.0.0.1", srv.port))
                    s.sendall(head)
                    socks.append(s)
                start = time.perf_counter()
                time.sleep(3.0)
                windows.append((start, time.perf_counter()))
                result["inflight_gauge"] = [line for line in httpx.get(srv.url + "/metrics").text.splitlines()
                                            if line.startswith("lstm_serve_inflight_requests ")]
            else:
                with httpx.Client(base_url=srv.url, timeout=60) as client:
                    for _ in range(args.rounds):
                        t0 = time.perf_counter()
                        r = client.post("/v2/models/demo/infer", content=body, headers={"content-type": "application/json"})
                        windows.append((t0, time.perf_counter()))
                        assert r.status_code == (200 if args.valid else 400), r.text[:300]
                        time.sleep(0.3)
                result["big_request_s"] = [round(b - a, 3) for a, b in windows]
            stop.set()
            t.join()
            during = [d for s0, d, _ in samples[mark:] if any(a <= s0 + d and s0 <= b for a, b in windows)]
            result["during"] = summary(during)
            for kind in ("ready", "infer"):
                result[f"during_{kind}"] = summary([d for s0, d, k in samples[mark:] if k == kind and any(a <= s0 + d and s0 <= b for a, b in windows)])
            for s in socks:
                s.close()
        finally:
            srv.stop()
        print(json.dumps(result))


if __name__ == "__main__":
    main()
