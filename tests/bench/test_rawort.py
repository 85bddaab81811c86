"""``bench.rawort`` runs raw ONNX Runtime as the server runs it: the sessions a server with given
settings creates, each batch on the session the server would pick for it. A reference that ran
a batch of 1 at two threads, where the server runs it on its one-thread session, was slower than
the server (a lone client read a CPU efficiency above 1)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from app.config import Settings
from app.engine.runtime import Runtime
from app.testing import ROOT
from bench.rawort import session, small_session
from bench.suite import effective_settings, session_config

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def tiny():  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")  # the bench exports its model
    from bench.__main__ import model_path

    return model_path("tiny")


def test_the_session_config_carries_the_small_batch_session() -> None:
    defaults = session_config(effective_settings({}))
    assert defaults["small"] == Settings().small_batch_max_size and defaults["intra"] == Settings().ort_threads
    assert session_config(effective_settings({"small_batch_max_size": 0}))["small"] == 0
    assert session_config(effective_settings({"small_batch_max_size": 4}))["small"] == 4


@pytest.mark.parametrize("overrides", [{}, {"small_batch_max_size": 3}, {"small_batch_max_size": 0},
                                       {"intra_op_threads": 1}, {"intra_op_threads": 0}])
def test_each_batch_runs_on_the_session_the_server_picks(tiny, overrides: dict) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(**overrides)
    runtime = Runtime(tiny, settings)
    config = session_config(effective_settings(overrides))
    for batch in range(1, 6):
        server_small = runtime._small is not None and batch <= runtime.small_batch_max_size
        assert small_session(config, CPU, batch) == server_small, (overrides, batch)
        threads = session(str(tiny), config, CPU, batch).get_session_options().intra_op_num_threads
        expected = (runtime._small if server_small else runtime.session).get_session_options().intra_op_num_threads
        assert threads == expected, (overrides, batch)
    assert not small_session(config, ["CUDAExecutionProvider", *CPU], 1)  # the server has none on CUDA


def test_the_command_reports_which_session_ran_each_case(tiny) -> None:  # type: ignore[no-untyped-def]
    config = {"intra": 2, "spinning": 0, "arena": 0, "small": 1}
    out = subprocess.run([sys.executable, "-m", "bench.rawort", str(tiny), "--config", json.dumps(config),
                          "--cases", "1x1,2x1,1x2", "--seconds", "0.05"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    cases = json.loads(out.stdout.strip().splitlines()[-1])["cases"]
    assert [(c["batch"], c["callers"], c["small_session"]) for c in cases] == [(1, 1, True), (2, 1, False), (1, 2, True)]
    assert all(c["calls"] > 0 and c["cpu_ms_per_seq"] > 0 for c in cases)
