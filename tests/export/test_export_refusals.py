"""Configurations we cannot export exactly are refused with a named error; bad input is clear."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from export import (CheckpointError, ExportError, StackedLSTM, UnsupportedModelError,
                    VerificationError, export_model, load_checkpoint)
from export.exporter import existing_versions


def test_proj_size_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match="proj_size"):
        StackedLSTM.from_modules(nn.LSTM(3, 8, batch_first=True, proj_size=4), nn.Linear(4, 1))


def test_other_recurrent_layers_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match="GRU.*nn.LSTM"):
        export_model(nn.GRU(3, 8), tmp_path, "gru")

    class GruModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 8)
            self.fc = nn.Linear(8, 1)

    with pytest.raises(UnsupportedModelError, match="GRU"):
        export_model(GruModel(), tmp_path, "gru2")
    assert not (tmp_path / "gru").exists() and not (tmp_path / "gru2").exists()


def test_head_that_mixes_time_steps_refused(tmp_path):
    class Mixer(nn.Module):
        def forward(self, x):
            return x.mean(dim=1)

    with pytest.raises(UnsupportedModelError, match="each time step alone"):
        StackedLSTM.from_modules(nn.LSTM(3, 8, batch_first=True), Mixer())
    with pytest.raises(UnsupportedModelError, match="Conv1d"):
        StackedLSTM.from_modules(nn.LSTM(3, 8, batch_first=True), nn.Sequential(nn.Conv1d(8, 1, 3)))


def test_unknown_module_refused_with_way_in(tmp_path):
    with pytest.raises(UnsupportedModelError, match="from_modules"):
        export_model(nn.Linear(3, 3), tmp_path, "x")


def test_user_module_with_lstm_and_head_exports(tmp_path):
    class MyNet(nn.Module):
        task = "many_to_many"

        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 5, num_layers=2, batch_first=True)
            self.head = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Dropout(0.1), nn.Linear(4, 2))

    torch.manual_seed(0)
    path = export_model(MyNet(), tmp_path, "mine", card_latency=False)
    assert path == tmp_path / "mine" / "1" / "model.onnx"
    lstm = nn.LSTM(3, 5, batch_first=False)
    path2 = export_model((lstm, nn.Sequential(nn.Linear(5, 3), nn.GELU(), nn.Linear(3, 1))),
                         tmp_path, "pair", task="many_to_one", card_latency=False)
    assert path2.is_file()


def test_bad_checkpoint_path_is_clear(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="could not read"):
        load_checkpoint(bad)
    proc = subprocess.run([sys.executable, "-m", "export", "export", str(tmp_path / "missing.pt"),
                           "-r", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr


def test_pickled_module_needs_allow_pickle(tmp_path):
    model = StackedLSTM(3, 4, 1, 1)
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="allow-pickle"):
        load_checkpoint(tmp_path / "whole.pt")
    loaded = load_checkpoint(tmp_path / "whole.pt", allow_pickle=True)
    assert loaded.config == model.config


def test_bare_state_dict_needs_no_config(tmp_path):
    model = StackedLSTM(3, 4, 2, 2, bidirectional=True)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded = load_checkpoint(tmp_path / "sd.pt", {"task": "many_to_many"})
    assert loaded.config == {**model.config, "task": "many_to_many"}


def test_existing_version_is_never_overwritten(tmp_path):
    model = StackedLSTM(3, 4, 1, 1)
    export_model(model, tmp_path, "m", 3, card_latency=False)
    with pytest.raises(ExportError, match="never overwritten"):
        export_model(model, tmp_path, "m", 3, card_latency=False)
    assert export_model(model, tmp_path, "m", card_latency=False).parent.name == "4"


def test_failed_verification_leaves_nothing_behind(tmp_path, monkeypatch):
    import export.exporter as ex

    real = ex.build_graph

    def sabotaged(model, spec, norm=None, **kw):
        proto = real(model, spec, norm, **kw)
        w = next(t for t in proto.graph.initializer if t.name.startswith("head_bias"))
        w.float_data[:] = []
        import numpy as np
        from onnx import numpy_helper

        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) + np.float32(1e-3), w.name))
        return proto

    monkeypatch.setattr(ex, "build_graph", sabotaged)
    with pytest.raises(VerificationError) as info:
        export_model(StackedLSTM(3, 4, 1, 1), tmp_path, "bad", card_latency=False)
    assert info.value.max_error > 1e-5 and "max error" in str(info.value)
    assert existing_versions(tmp_path / "bad") == []
    assert list((tmp_path / "bad").iterdir()) == [] if (tmp_path / "bad").exists() else True
