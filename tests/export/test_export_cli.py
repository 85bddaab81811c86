"""CLI end to end into a temporary repository: export with variants, the shortened demo."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from app import contract as C
from export import StackedLSTM
from export.testing import check_artifact, make_model

CLI = [sys.executable, "-m", "export"]


def cli(*args, check=True):
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_documents_every_option():
    out = cli("export", "--help").stdout
    for option in ("--repository", "--name", "--version", "--config", "--task", "--normalization",
                   "--feature-names", "--fp16", "--int8", "--variant-default", "--allow-pickle", "--tolerance",
                   "--no-card-latency", "--reference-length", "--latency-runs"):
        assert option in out, option
    assert "--max-steps" in cli("demo", "--help").stdout


@pytest.mark.slow
def test_cli_export_with_variants(tmp_path):
    torch.manual_seed(0)
    model = StackedLSTM(3, 8, 2, 2, task="many_to_many")
    model.save_checkpoint(tmp_path / "ckpt.pt")
    repo = tmp_path / "repo"
    proc = cli("export", tmp_path / "ckpt.pt", "-r", repo, "--name", "traffic", "--fp16", "--int8",
               "--feature-names", "a,b,c", "--normalization", '{"mean": [0, 1, 2], "std": [1, 2, 3]}',
               "--latency-runs", "5")
    assert "parity vs PyTorch" in proc.stdout  # the card is printed
    specs = {}
    for version, precision in ((1, "fp32"), (2, "fp16"), (3, "int8")):
        path = repo / "traffic" / str(version) / "model.onnx"
        card = json.loads((path.parent / "model.json").read_text())
        assert card["precision"] == precision and card["version"] == version
        meta = {p.key: p.value for p in onnx.load(path).metadata_props}
        assert meta[C.META_PRECISION] == precision
        specs[precision] = meta
        if precision == "fp32":
            spec = check_artifact(path)
            assert [m["batch"] for m in card["latency"]["measurements"]] == [1, 64]
        else:
            comparison = card["precision_comparison"]
            if precision == "int8":
                spec = check_artifact(path)
                assert comparison["measured"] and comparison["rel_l2_error_vs_fp32"] < 0.1
            else:
                # fp16: same IO as fp32, LSTM weights stored in fp16. ORT-CPU may refuse it.
                proto = onnx.load(path)
                lstm_w = {n.input[1] for n in proto.graph.node if n.op_type == "LSTM"}
                assert all(t.data_type == onnx.TensorProto.FLOAT16
                           for t in proto.graph.initializer if t.name in lstm_w)
                if comparison["measured"]:
                    spec = check_artifact(path)
                    assert comparison["max_abs_error_vs_fp32"] < 1e-2
                else:
                    assert comparison["reason"]
            assert spec.input_shapes() == C.ModelSpec.from_metadata(specs["fp32"]).input_shapes()
    assert specs["fp32"][C.META_WEIGHTS_SHA256] == specs["int8"][C.META_WEIGHTS_SHA256]
    # The variants do not take over unversioned requests: fp32 stays the default version.
    assert json.loads((repo / "traffic" / "settings.json").read_text()) == {"default_version": 1}


def test_cli_verification_failure_exits_nonzero_with_max_error(tmp_path):
    StackedLSTM(3, 4, 1, 1).save_checkpoint(tmp_path / "c.pt")
    proc = cli("export", tmp_path / "c.pt", "-r", tmp_path, "--tolerance", "1e-15",
               "--no-card-latency", check=False)
    assert proc.returncode == 1
    assert "verification failed: max error" in proc.stderr
    assert not (tmp_path / "c" / "1").exists()


@pytest.mark.slow
def test_demo_shortened_end_to_end(tmp_path):
    proc = cli("demo", "-r", tmp_path, "--epochs", "1", "--max-steps", "5", "--no-progress",
               "--no-card-latency")
    path = tmp_path / "demo" / "1" / "model.onnx"
    assert str(path) in proc.stdout
    spec = check_artifact(path)
    assert spec.feature_names == ("precipitation", "temp_max", "temp_min", "wind")
    card = json.loads((path.parent / "model.json").read_text())
    assert card["evaluation"]["training"]["steps"] == 5
    assert "persistence_baseline_mae_c" in card["evaluation"]


def test_make_model_helper(tmp_path):
    path = make_model(tmp_path, "tiny", num_layers=2, hidden_size=4, bidirectional=True,
                      task="many_to_many", seed=1)
    spec = check_artifact(path)
    assert (spec.num_layers, spec.bidirectional, spec.task) == (2, True, "many_to_many")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {C.INPUT: np.zeros((2, 3, 3), np.float32),
                          C.SEQUENCE_LENS: np.array([3, 1], np.int32)})[0]
    assert out.shape == (2, 3, 2)
