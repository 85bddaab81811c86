"""The committed demo artifact loads in ONNX Runtime (no torch needed) and satisfies the contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app import contract as C
from export.testing import check_artifact

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo" / "1" / "model.onnx"


def test_demo_artifact_satisfies_contract():
    assert DEMO.is_file(), "run `lstm-export demo` to create models/demo/1"
    assert DEMO.stat().st_size < 1_000_000
    spec = check_artifact(DEMO)
    assert spec.task == C.MANY_TO_ONE and spec.stateful and spec.precision == "fp32"
    assert spec.feature_names == ("precipitation", "temp_max", "temp_min", "wind")
    assert json.loads(spec.extra[C.META_NORMALIZATION]).keys() == {"mean", "std"}
    sess = ort.InferenceSession(str(DEMO), providers=["CPUExecutionProvider"])
    # two raw-feature histories (deg C, mm, m/s), ragged
    x = np.tile(np.array([0.0, 15.0, 8.0, 3.0], np.float32), (2, 14, 1))
    out = sess.run(None, {C.INPUT: x, C.SEQUENCE_LENS: np.array([14, 5], np.int32),
                          C.INITIAL_H: spec.zero_state(2), C.INITIAL_C: spec.zero_state(2)})[0]
    assert out.shape == (2, 1) and np.all((out > 5) & (out < 30)), out


def test_demo_card_reports_real_error():
    card = json.loads((DEMO.parent / "model.json").read_text())
    ev = card["evaluation"]
    assert ev["test_mae_c"] < ev["persistence_baseline_mae_c"]
    assert card["verification"]["max_abs_error"] <= 1e-5
    assert "int8" in ev["onnx_runtime_on_real_data"]
