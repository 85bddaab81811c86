"""SIGTERM under load: every request accepted before it gets a real answer, then the server
exits 0 within the drain timeout: one process, or a supervisor with its HTTP workers and
engine process (each of which must be gone, having exited 0)."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import Reference, alive, start_server


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_sigterm_drains_every_accepted_request(model_repo: Path, reference: Reference, tmp_path: Path, workers: int) -> None:
    # Requests wait in the queue (long delay, no dispatch when idle) so SIGTERM finds them there.
    srv = start_server(model_repo, tmp_path, dispatch_when_idle="false", max_queue_delay_ms=1500,
                       max_batch_size=64, drain_timeout_s=10, workers=workers)
    children = [srv.processes()[0], *srv.processes()[1]] if workers > 1 else []
    rng = np.random.default_rng(8)
    xs = [rng.standard_normal((1, int(rng.integers(1, 30)), 3)).astype(np.float32) for _ in range(24)]

    def call(x: np.ndarray) -> httpx.Response:
        return httpx.post(f"{srv.url}/v2/models/uni/infer", timeout=30, json={
            "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
            "outputs": [{"name": "output"}]})

    with concurrent.futures.ThreadPoolExecutor(len(xs)) as pool:
        futures = [pool.submit(call, x) for x in xs]
        deadline = time.monotonic() + 10
        while f'lstm_serve_queue_depth{{model="uni",version="1"}} {len(xs)}.0' not in srv.metrics():
            assert time.monotonic() < deadline, "requests never all queued"
            time.sleep(0.02)
        t0 = time.monotonic()
        code = srv.stop(timeout=30)
        elapsed = time.monotonic() - t0
        responses = [f.result() for f in futures]
    assert code == 0, srv.log()[-3000:]
    assert elapsed < 10 + 2
    for x, resp in zip(xs, responses):
        assert resp.status_code == 200, resp.text
        got = np.asarray(resp.json()["outputs"][0]["data"], np.float32)
        np.testing.assert_allclose(got, reference.run("uni", x[0])["output"][0], atol=1e-5)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{srv.url}/v2/health/live", timeout=2)
    assert '"msg":"drained; exiting"' in srv.log()
    assert not any(alive(p) for p in children)
    if workers > 1:
        stopped = next(d for d in srv.log_lines() if d.get("msg") == "stopped")
        assert set(stopped["exit_codes"].values()) == {0}, stopped
