"""Parity matrix: layers 1/2/4 x uni/bi x many_to_one/many_to_many, ragged batches, against
per-sequence eager PyTorch; chunked-state equivalence for unidirectional models."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from app import contract as C
from export.exporter import read_card
from export.testing import check_artifact

from tests.export.export_matrix import MATRIX, matrix_id

TOL = 1e-5
MEAN = np.array([0.5, -1.0, 2.0], np.float32)
STD = np.array([1.5, 0.5, 3.0], np.float32)


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(sess, spec, x, lens, h0=None, c0=None):
    feeds = {C.INPUT: x, C.SEQUENCE_LENS: lens.astype(np.int32)}
    if spec.stateful:
        feeds[C.INITIAL_H] = spec.zero_state(len(x)) if h0 is None else h0
        feeds[C.INITIAL_C] = spec.zero_state(len(x)) if c0 is None else c0
    return dict(zip(spec.output_names, sess.run(list(spec.output_names), feeds)))


@pytest.mark.parametrize("config", MATRIX, ids=matrix_id)
def test_parity_ragged_against_per_sequence_torch(exported, config):
    model, path = exported[config]
    spec = check_artifact(path)
    sess = session(path)
    rng = np.random.default_rng(7)
    worst = 0.0
    for batch, time in ((1, 1), (3, 1), (6, 11), (16, 30)):  # none is a "tracing" shape
        lens = rng.integers(1, time + 1, batch).astype(np.int32)
        lens[0] = 1
        lens[-1] = time
        x = rng.standard_normal((batch, time, 3)).astype(np.float32) * STD + MEAN
        x[np.arange(time)[None, :] >= lens[:, None]] = 1e3  # padding must not matter
        h0 = c0 = None
        if spec.stateful:
            h0 = rng.standard_normal((spec.num_layers, batch, 6)).astype(np.float32)
            c0 = rng.standard_normal((spec.num_layers, batch, 6)).astype(np.float32)
        got = run(sess, spec, x.astype(np.float32), lens, h0, c0)
        for i in range(batch):
            n = int(lens[i])
            row = torch.from_numpy((x[i : i + 1, :n] - MEAN) / STD)
            state = None if h0 is None else (torch.from_numpy(h0[:, i : i + 1].copy()),
                                             torch.from_numpy(c0[:, i : i + 1].copy()))
            with torch.no_grad():
                out, (h, c) = model(row, state=state, return_state=True)
            if spec.task == C.MANY_TO_ONE:
                worst = max(worst, float(np.abs(got[C.OUTPUT][i] - out[0].numpy()).max()))
            else:
                worst = max(worst, float(np.abs(got[C.OUTPUT][i, :n] - out[0].numpy()).max()))
                assert np.all(got[C.OUTPUT][i, n:] == 0), "steps past the length must be zero"
            if spec.stateful:
                worst = max(worst, float(np.abs(got[C.FINAL_H][:, i] - h[:, 0].numpy()).max()),
                            float(np.abs(got[C.FINAL_C][:, i] - c[:, 0].numpy()).max()))
    assert worst <= TOL, f"max error {worst}"
    card = read_card(path)
    assert card["verification"]["max_abs_error"] <= TOL


@pytest.mark.parametrize("config", [m for m in MATRIX if not m[1]], ids=matrix_id)
def test_chunked_state_equals_whole(exported, config):
    _, path = exported[config]
    spec = check_artifact(path)
    sess = session(path)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 20, 3)).astype(np.float32)
    lens = np.array([20, 13], np.int32)
    whole = run(sess, spec, x, lens)
    first = run(sess, spec, x[:, :8].copy(), np.array([8, 8], np.int32))
    second = run(sess, spec, x[:, 8:].copy(), lens - 8, first[C.FINAL_H], first[C.FINAL_C])
    for name in (C.FINAL_H, C.FINAL_C):
        np.testing.assert_allclose(second[name], whole[name], atol=TOL, rtol=0)
    if spec.task == C.MANY_TO_ONE:
        np.testing.assert_allclose(second[C.OUTPUT], whole[C.OUTPUT], atol=TOL, rtol=0)
    else:
        joined = np.concatenate([first[C.OUTPUT], second[C.OUTPUT]], axis=1)
        np.testing.assert_allclose(joined[1, :13], whole[C.OUTPUT][1, :13], atol=TOL, rtol=0)
        np.testing.assert_allclose(joined[0], whole[C.OUTPUT][0], atol=TOL, rtol=0)
    assert read_card(path)["verification"]["chunked_state_max_error"] <= TOL


@pytest.mark.parametrize("config", MATRIX, ids=matrix_id)
def test_graph_structure_and_metadata(exported, config):
    layers, bidir, task = config
    model, path = exported[config]
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    lstm_nodes = [n for n in proto.graph.node if n.op_type == "LSTM"]
    assert len(lstm_nodes) == layers
    assert all(len(n.input) >= 5 and n.input[4] == C.SEQUENCE_LENS for n in lstm_nodes)
    meta = {p.key: p.value for p in proto.metadata_props}
    spec = C.ModelSpec.from_metadata(meta)
    assert (spec.task, spec.num_layers, spec.bidirectional, spec.hidden_size) == (task, layers, bidir, 6)
    assert spec.feature_names == ("a", "b", "c")
    assert json.loads(meta[C.META_NORMALIZATION]) == {"mean": MEAN.tolist(), "std": STD.tolist()}
    for key in (C.META_EXPORTER_VERSION, C.META_TORCH_VERSION, C.META_ONNX_VERSION, C.META_WEIGHTS_SHA256):
        assert meta[key]
    assert meta[C.META_PRECISION] == "fp32"
    # single self-contained file: no external data
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    card = read_card(path)
    assert card["spec"]["num_layers"] == layers
    assert abs(sum(layer["flops_share"] for layer in card["layers"]) - 1) < 0.02 or task == "many_to_many"


def test_training_forward_with_lengths_matches_per_sequence():
    torch.manual_seed(0)
    from export import StackedLSTM

    for bidir in (False, True):
        model = StackedLSTM(3, 5, 2, 2, bidirectional=bidir, task="many_to_many").eval()
        x = torch.randn(4, 9, 3)
        lens = torch.tensor([9, 1, 4, 6])
        with torch.no_grad():
            batched = model(x, lens)
            for i in range(4):
                alone = model(x[i : i + 1, : lens[i]])
                torch.testing.assert_close(batched[i, : lens[i]], alone[0], atol=1e-6, rtol=0)
                assert torch.all(batched[i, lens[i] :] == 0)
