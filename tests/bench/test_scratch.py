"""``bench.scratch.run_scratch``: a run's folder goes when the run went well, stays when it failed."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from bench.scratch import run_scratch


@pytest.fixture
def tmp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("BENCH_KEEP_SCRATCH", raising=False)
    return tmp_path


def test_a_run_that_ends_normally_leaves_nothing(tmp_root: Path) -> None:
    with run_scratch("bench-t-") as scratch:
        (scratch / "logs").mkdir()
        (scratch / "logs" / "server.log").write_text("ready")
        assert scratch.parent == tmp_root and scratch.name.startswith("bench-t-")
    assert list(tmp_root.iterdir()) == []


def test_a_failed_run_keeps_its_logs_and_says_where(tmp_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="server died"):
        with run_scratch("bench-t-") as scratch:
            (scratch / "server.log").write_text("traceback")
            raise RuntimeError("server died")
    assert (scratch / "server.log").read_text() == "traceback"
    assert f"kept {scratch}" in capsys.readouterr().err


def test_keep_asked_for_keeps_a_good_run_too(tmp_root: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BENCH_KEEP_SCRATCH", "1")
    with run_scratch("bench-t-") as scratch:
        (scratch / "body1.bin").write_bytes(b"{}")
    assert (scratch / "body1.bin").exists() and f"kept {scratch}" in capsys.readouterr().err


def test_an_exit_with_an_error_status_keeps_it_and_a_clean_exit_does_not(tmp_root: Path) -> None:
    with pytest.raises(SystemExit):
        with run_scratch("bench-t-") as failed:
            raise SystemExit(1)
    with pytest.raises(SystemExit):
        with run_scratch("bench-t-") as clean:
            raise SystemExit(0)
    assert failed.exists() and not clean.exists()
