"""Triton's statistics extension: exact against the traffic a real client sent, in the form
tritonclient reads; and the accumulator's arithmetic, including failures and merging."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from app.engine.stats import ModelStats
from tests.conftest import Server, start_server

PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@pytest.fixture(scope="module")
def fresh(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server no other test sends traffic to, so its counters are this module's alone."""
    srv = start_server(model_repo, tmp_path_factory.mktemp("stats-logs"))
    yield srv
    srv.stop()


def send(server: Server, model: str, n: int, t: int, features: int) -> None:
    x = np.ones((n, t, features), np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    triton.InferenceServerClient(server.hostport).infer(model, [inp])


def test_statistics_count_exactly_what_was_sent(fresh: Server) -> None:
    client = triton.InferenceServerClient(fresh.hostport)
    before = client.get_inference_statistics("uni")["model_stats"][0]
    assert before["inference_count"] == 0 and before["execution_count"] == 0 and before["last_inference"] == 0
    sizes = [1, 3, 2, 3, 3]
    for n in sizes:  # one at a time: each request is a batch of its own
        send(fresh, "uni", n, 4, 3)
    stats = client.get_inference_statistics("uni", "1")["model_stats"]
    assert len(stats) == 1
    s = stats[0]
    assert (s["name"], s["version"]) == ("uni", "1")
    assert s["inference_count"] == sum(sizes)
    assert s["execution_count"] == len(sizes)
    assert s["last_inference"] > 0
    inf = s["inference_stats"]
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert inf[phase]["count"] == len(sizes), phase
        assert inf[phase]["ns"] > 0, phase
    assert inf["fail"] == {"count": 0, "ns": 0}
    parts = sum(inf[p]["ns"] for p in ("queue", "compute_input", "compute_infer", "compute_output"))
    assert inf["success"]["ns"] == parts
    by_size = {b["batch_size"]: b for b in s["batch_stats"]}
    assert sorted(by_size) == [1, 2, 3]
    assert {k: b["compute_infer"]["count"] for k, b in by_size.items()} == {1: 1, 2: 1, 3: 3}
    assert sum(b["compute_infer"]["ns"] for b in by_size.values()) == inf["compute_infer"]["ns"]


def test_concurrent_requests_share_batches_and_still_add_up(fresh: Server) -> None:
    client = triton.InferenceServerClient(fresh.hostport)
    before = client.get_inference_statistics("bi")["model_stats"][0]
    threads = [threading.Thread(target=send, args=(fresh, "bi", 2, 6, 3)) for _ in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    s = client.get_inference_statistics("bi")["model_stats"][0]
    assert s["inference_count"] - before["inference_count"] == 24
    assert s["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 12
    executions = sum(b["compute_infer"]["count"] for b in s["batch_stats"])
    assert executions == s["execution_count"] <= s["inference_stats"]["success"]["count"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in s["batch_stats"]) == s["inference_count"]


def test_all_models_and_unknown_models(fresh: Server) -> None:
    client = triton.InferenceServerClient(fresh.hostport)
    every = client.get_inference_statistics()["model_stats"]
    assert sorted((m["name"], m["version"]) for m in every) == [("bi", "1"), ("demo", "1"), ("uni", "1")]
    assert all(set(m["inference_stats"]) == set(PHASES) for m in every)
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_inference_statistics("nope")
    assert httpx.get(f"{fresh.url}/v2/models/uni/versions/9/stats").status_code == 404


def test_refused_requests_are_not_counted(fresh: Server) -> None:
    client = triton.InferenceServerClient(fresh.hostport)
    before = client.get_inference_statistics("demo")["model_stats"][0]
    bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 4], "data": ["x", 1, 2, 3]}]}
    assert httpx.post(f"{fresh.url}/v2/models/demo/infer", json=bad).status_code == 400
    assert client.get_inference_statistics("demo")["model_stats"][0] == before


def test_accumulator_failures_snapshot_and_merge() -> None:
    a = ModelStats()
    a.record_execution([100, 200], [2, 1], started_ns=1_000, infer_ns=1_500, infer_end_ns=4_500, end_ns=5_000)
    a.record_failure(requests=2, ns=7_000)
    t = a.to_triton("m", "3")
    assert t["inference_count"] == 3 and t["execution_count"] == 1
    assert t["inference_stats"]["queue"] == {"count": 2, "ns": 900 + 800}
    assert t["inference_stats"]["compute_input"] == {"count": 2, "ns": 1_000}
    assert t["inference_stats"]["compute_infer"] == {"count": 2, "ns": 6_000}
    assert t["inference_stats"]["success"] == {"count": 2, "ns": 1_700 + 2 * 4_000}
    assert t["inference_stats"]["fail"] == {"count": 2, "ns": 7_000}
    assert t["batch_stats"] == [{"batch_size": 3, "compute_input": {"count": 1, "ns": 500},
                                 "compute_infer": {"count": 1, "ns": 3_000}, "compute_output": {"count": 1, "ns": 500}}]
    b = ModelStats()
    b.merge(a.snapshot())
    b.merge(a.snapshot())
    doubled = b.to_triton("m", "3")
    assert doubled["inference_count"] == 6 and doubled["batch_stats"][0]["compute_infer"] == {"count": 2, "ns": 6_000}
    assert doubled["inference_stats"]["fail"] == {"count": 4, "ns": 14_000}
