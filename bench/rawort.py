"""Raw ONNX Runtime ceiling, run as its own process so it is measured like the server.

    python -m bench.rawort MODEL --config '{"intra": 1, "spinning": 0, "arena": 0}' \
        --cases 1x1,8x2,32x2 --seconds 0.3 --length 50

A case ``BxK`` runs ``InferenceSession.run`` on batches of ``B`` sequences from ``K`` threads
sharing one session (the server runs ``max_batches_in_flight`` batches at once on one session).
Feeds are built exactly as the server builds them (``app.engine.padding.merge``), and only ``output``
is fetched, as the bench's requests ask. Prints one JSON object: per case the sequences/s, the
p50 of one call and the process's CPU-ms per sequence (``time.process_time``: every thread).
A config key left out keeps ONNX Runtime's default (``{}`` is ORT's defaults throughout).

``"small": N`` mirrors the server's ``small_batch_max_size``: on the CPU provider, with other
than one intra-op thread, a batch of at most ``N`` sequences runs on a second session of one
thread, as ``app.engine.runtime.Runtime`` runs it. Without it a raw batch of 1 at the server's
settings would run at two threads (0.74 ms and 1.0 CPU-ms where the server's own session takes
0.58 and 0.62 on the bench model), a reference slower than the server, whose lone client then
read a CPU efficiency above 1.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np


def session(model: str, config: dict, providers: list[str], batch: int | None = None):  # type: ignore[no-untyped-def]
    """The session ``config`` describes; with ``batch``, the one the server would run a batch of
    that many sequences on (the one-thread session for a small batch: ``"small"``, above)."""
    import onnxruntime as ort

    if batch is not None and small_session(config, providers, batch):
        config = {**config, "intra": 1}

    opts = ort.SessionOptions()
    if "intra" in config:
        opts.intra_op_num_threads = int(config["intra"])
        opts.inter_op_num_threads = 1
    if "spinning" in config:
        opts.add_session_config_entry("session.intra_op.allow_spinning", str(int(config["spinning"])))
    if "arena" in config:
        opts.enable_cpu_mem_arena = bool(config["arena"])
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=providers)


def small_session(config: dict, providers: list[str], batch: int) -> bool:
    """Whether the server runs a batch of ``batch`` sequences on its one-thread session (the
    rule of ``app.engine.runtime.Runtime``)."""
    return (providers[0] == "CPUExecutionProvider" and int(config.get("intra", 0)) != 1
            and batch <= int(config.get("small", 0)))


def feeds_for(sess, batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    from app.contract import ModelSpec
    from app.engine.padding import merge
    from app.v2.sequences import Sequences

    spec = ModelSpec.from_metadata(dict(sess.get_modelmeta().custom_metadata_map))
    x = rng.standard_normal((batch, length, spec.input_size)).astype(np.float32)
    return merge([Sequences(x, np.full(batch, length, dtype=np.int32))], spec).feeds


def run_case(sess, feeds: dict, callers: int, seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    batch = int(feeds["input"].shape[0])
    for _ in range(2):
        sess.run(["output"], feeds)
    lat: list[list[float]] = [[] for _ in range(callers)]
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        out = lat[i]
        while True:
            t = time.perf_counter()
            if t >= stop:
                return
            sess.run(["output"], feeds)
            out.append(time.perf_counter() - t)

    c0, w0 = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    calls = sum(len(x) for x in lat)
    every = np.concatenate([np.asarray(x) for x in lat]) if calls else np.array([np.nan])
    seqs = calls * batch
    return {
        "batch": batch,
        "callers": callers,
        "calls": calls,
        "seq_s": seqs / wall,
        "p50_ms": float(np.percentile(every, 50) * 1000),
        "cpu_ms_per_seq": cpu * 1000 / max(seqs, 1),
        "cpu_cores": cpu / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--config", default="{}")
    ap.add_argument("--cases", default="1x1")
    ap.add_argument("--seconds", type=float, default=0.3)
    ap.add_argument("--length", type=int, default=50)
    ap.add_argument("--providers", default="CPUExecutionProvider")
    args = ap.parse_args()
    config = json.loads(args.config)
    providers = args.providers.split(",")
    sess = session(args.model, config, providers)
    small = None
    rng = np.random.default_rng(0)
    results = []
    for case in args.cases.split(","):
        b, k = (int(v) for v in case.split("x"))
        s = sess
        if small_session(config, providers, b):
            s = small = small or session(args.model, config, providers, b)
        results.append({**run_case(s, feeds_for(s, b, args.length, rng), k, args.seconds), "small_session": s is small})
    print(json.dumps({"config": config, "providers": sess.get_providers(), "cases": results}))


if __name__ == "__main__":
    main()
