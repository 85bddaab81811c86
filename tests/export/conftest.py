"""Shared, session-scoped exports for the exporter's tests (tiny models, real torch and ORT)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from export import StackedLSTM, export_model  # noqa: E402
from tests.export.export_matrix import MATRIX, matrix_id  # noqa: E402

@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("repository")


@pytest.fixture(scope="session")
def exported(repo: Path) -> dict[tuple[int, bool, str], tuple[StackedLSTM, Path]]:
    """Every configuration of the parity matrix, exported once (verification included)."""
    out = {}
    for i, (layers, bidir, task) in enumerate(MATRIX):
        torch.manual_seed(100 + i)
        model = StackedLSTM(3, 6, layers, 2, bidirectional=bidir, task=task).eval()
        path = export_model(model, repo, f"m-{matrix_id((layers, bidir, task))}", card_latency=False,
                            normalization=([0.5, -1.0, 2.0], [1.5, 0.5, 3.0]), feature_names=["a", "b", "c"])
        out[(layers, bidir, task)] = (model, path)
    return out
