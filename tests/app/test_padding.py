"""The server's half of the padding-aware contract, against real ONNX Runtime: rows of several
requests padded into one call and split back equal each sequence run alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.engine import padding
from app.config import Settings
from app.v2.sequences import Sequences
from app.engine.runtime import Runtime
from tests.conftest import Reference


def _runtime(repo: Path, name: str) -> Runtime:
    return Runtime(repo / name / "1" / "model.onnx", Settings(providers="cpu"))


# (sequences, time steps) of each request: padded row by row, and all of one time length
# (joined in one copy; their rows' own lengths still differ).
PLANS = {"mixed": [(2, 5), (1, 17), (3, 1), (1, 9)], "one length": [(2, 9), (1, 9), (3, 9), (1, 9)]}


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("name", ["uni", "bi"])
def test_merged_batch_equals_each_sequence_alone(model_repo: Path, reference: Reference, name: str, plan: str) -> None:
    rt = _runtime(model_repo, name)
    spec = rt.spec
    rng = np.random.default_rng(11)
    requests = []
    for n, t in PLANS[plan]:
        lengths = rng.integers(1, t + 1, size=n).astype(np.int32)
        requests.append(Sequences(rng.standard_normal((n, t, spec.input_size)).astype(np.float32), lengths))
    merged = padding.merge(requests, spec)
    longest = max(t for _, t in PLANS[plan])
    assert merged.feeds["input"].shape == (7, longest, spec.input_size)
    assert merged.feeds["input"].dtype == np.float32 and merged.feeds["sequence_lens"].dtype == np.int32
    np.testing.assert_array_equal(merged.feeds["sequence_lens"], np.concatenate([r.lengths for r in requests]))
    assert merged.valid_steps == sum(int(r.lengths.sum()) for r in requests)
    assert 0 < merged.padding_ratio < 1
    outputs = rt.run(merged.feeds, list(spec.output_names))
    for req, got in zip(requests, padding.split(outputs, requests, spec)):
        for i, n in enumerate(req.lengths):
            want = reference.run(name, req.x[i, :n])
            if spec.task == "many_to_one":
                np.testing.assert_allclose(got["output"][i], want["output"][0], atol=1e-5)
            else:
                assert got["output"].shape[1] == req.t  # trimmed to the request's own length
                np.testing.assert_allclose(got["output"][i, :n], want["output"][0], atol=1e-5)
                assert not got["output"][i, n:].any()
            if spec.stateful:
                np.testing.assert_allclose(got["final_h"][:, i], want["final_h"][:, 0], atol=1e-5)
                np.testing.assert_allclose(got["final_c"][:, i], want["final_c"][:, 0], atol=1e-5)


def test_carried_state_and_fresh_rows_share_a_batch(model_repo: Path, reference: Reference) -> None:
    rt = _runtime(model_repo, "uni")
    spec = rt.spec
    rng = np.random.default_rng(12)
    whole = rng.standard_normal((10, 3)).astype(np.float32)
    head = reference.run("uni", whole[:4])
    fresh = Sequences(rng.standard_normal((2, 6, 3)).astype(np.float32), np.array([6, 3], np.int32))
    cont = Sequences(whole[None, 4:], np.array([6], np.int32), head["final_h"], head["final_c"])
    outputs = rt.run(padding.merge([fresh, cont], spec).feeds, list(spec.output_names))
    got_fresh, got_cont = padding.split(outputs, [fresh, cont], spec)
    np.testing.assert_allclose(got_cont["output"][0], reference.run("uni", whole)["output"][0], atol=1e-5)
    np.testing.assert_allclose(got_fresh["output"][1], reference.run("uni", fresh.x[1, :3])["output"][0], atol=1e-5)
