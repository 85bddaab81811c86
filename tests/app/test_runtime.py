"""Runtime: the one-thread session for small batches gives the same answers and is used only
for batches of at most ``small_batch_max_size`` sequences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.engine import padding
from app.config import Settings
from app.engine.runtime import Runtime
from app.v2.sequences import Sequences
from tests.conftest import Reference


class Counting:
    """A real ONNX Runtime session that counts its calls."""

    def __init__(self, session: Any) -> None:
        self.session, self.calls = session, 0

    def run(self, *args: Any) -> Any:
        self.calls += 1
        return self.session.run(*args)


def _batch(rt: Runtime, xs: list[np.ndarray]) -> dict[str, np.ndarray]:
    seqs = [Sequences(x[None], np.array([len(x)], dtype=np.int32)) for x in xs]
    merged = padding.merge(seqs, rt.spec)
    return rt.run(merged.feeds, list(rt.spec.output_names))


@pytest.mark.parametrize("name", ["uni", "bi"])
def test_small_batches_take_the_one_thread_session_and_answer_the_same(
    model_repo: Path, reference: Reference, name: str
) -> None:
    rt = Runtime(model_repo / name / "1" / "model.onnx", Settings(providers="cpu", intra_op_threads=2))
    assert rt.small_batch_max_size == 1
    small, big = Counting(rt._small), Counting(rt.session)
    rt._small, rt.session = small, big  # type: ignore[assignment]
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((t, rt.spec.input_size)).astype(np.float32) for t in (7, 4, 9)]

    alone = _batch(rt, xs[:1])
    assert (small.calls, big.calls) == (1, 0)
    together = _batch(rt, xs)
    assert (small.calls, big.calls) == (1, 1)
    want = reference.run(name, xs[0])["output"][0]  # [O], or [time, O] for many-to-many
    np.testing.assert_allclose(alone["output"][0], want, atol=1e-5)
    np.testing.assert_allclose(together["output"][0][: len(want)] if want.ndim == 2 else together["output"][0],
                               want, atol=1e-5)


@pytest.mark.parametrize("settings", [{"intra_op_threads": 1}, {"intra_op_threads": 2, "small_batch_max_size": 0}])
def test_one_session_when_small_batches_gain_nothing(model_repo: Path, settings: dict) -> None:
    rt = Runtime(model_repo / "uni" / "1" / "model.onnx", Settings(providers="cpu", **settings))
    assert rt._small is None and rt.small_batch_max_size == 0
