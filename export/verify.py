"""Verification run on every export: the graph must reproduce PyTorch, row by row.

The reference is *per-sequence* eager PyTorch: each row of a ragged batch runs alone, at its
own length, with its own initial state. The graph runs the padded batch at once. Batch sizes,
time lengths and lengths differ from case to case (length 1 included) and padding holds large
garbage values, so a graph that reads padding, pins a shape or ignores ``sequence_lens`` fails.
For unidirectional models a ragged batch is also run in two chunks with the state carried and
compared with the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from app import contract as C

from . import ortrun
from .errors import VerificationError
from .graph import Normalization
from .model import StackedLSTM

DEFAULT_TOLERANCE = 1e-5
# (batch, time): batch 1 with length 1, a batch of length-1 rows, and ragged batches.
CASE_SHAPES: tuple[tuple[int, int], ...] = ((1, 1), (5, 1), (4, 7), (9, 23))


@dataclass(frozen=True)
class Case:
    """One right-padded batch in raw (un-normalised) feature space."""

    x: np.ndarray
    lengths: np.ndarray
    h0: np.ndarray | None
    c0: np.ndarray | None


def make_cases(spec: C.ModelSpec, normalization: Normalization | None, seed: int = 0,
               shapes: tuple[tuple[int, int], ...] = CASE_SHAPES) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases = []
    for batch, time in shapes:
        lengths = rng.integers(1, time + 1, size=batch).astype(np.int32)
        lengths[0] = time
        if batch > 1:
            lengths[1] = 1
        z = rng.standard_normal((batch, time, spec.input_size)).astype(np.float32)
        x = z if normalization is None else (normalization.mean + z * normalization.std)
        x = x.astype(np.float32)
        pad = np.arange(time)[None, :] >= lengths[:, None]
        x[pad] = rng.uniform(-100, 100, size=(int(pad.sum()), spec.input_size)).astype(np.float32)
        h0 = c0 = None
        if spec.stateful:
            shape = (spec.num_layers, batch, spec.hidden_size)
            h0 = (0.5 * rng.standard_normal(shape)).astype(np.float32)
            c0 = (0.5 * rng.standard_normal(shape)).astype(np.float32)
        cases.append(Case(x, lengths, h0, c0))
    return cases


@torch.no_grad()
def reference(model: StackedLSTM, spec: C.ModelSpec, case: Case,
              normalization: Normalization | None) -> dict[str, np.ndarray]:
    """Per-sequence eager PyTorch: each row alone, unpadded; outputs laid out like the graph's."""
    x = case.x if normalization is None else normalization.apply(case.x)
    batch, time = x.shape[:2]
    outs, hs, cs = [], [], []
    for i in range(batch):
        n = int(case.lengths[i])
        row = torch.from_numpy(np.ascontiguousarray(x[i : i + 1, :n]))
        state = None
        if spec.stateful:
            assert case.h0 is not None and case.c0 is not None
            state = (torch.from_numpy(np.ascontiguousarray(case.h0[:, i : i + 1])),
                     torch.from_numpy(np.ascontiguousarray(case.c0[:, i : i + 1])))
        out, (h, c) = model(row, state=state, return_state=True)
        out = out[0].numpy()
        if spec.task == C.MANY_TO_MANY:
            out = np.concatenate([out, np.zeros((time - n, spec.output_size), np.float32)])
        outs.append(out)
        hs.append(h[:, 0].numpy())
        cs.append(c[:, 0].numpy())
    result = {C.OUTPUT: np.stack(outs)}
    if spec.stateful:
        result[C.FINAL_H] = np.stack(hs, axis=1)
        result[C.FINAL_C] = np.stack(cs, axis=1)
    return result


def max_abs_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for name, value in want.items():
        if got[name].shape != value.shape:
            raise VerificationError(
                f"{name} has shape {list(got[name].shape)}, expected {list(value.shape)}",
                max_error=float("inf"), tolerance=0.0,
            )
        diff = np.abs(got[name].astype(np.float64) - value.astype(np.float64))
        worst = max(worst, float(np.nanmax(diff)) if np.isfinite(diff).all() else float("inf"))
    return worst


def chunked_error(sess: ort.InferenceSession, spec: C.ModelSpec, seed: int = 0) -> float:
    """Run a ragged batch whole, then in two chunks carrying the state; the largest difference."""
    rng = np.random.default_rng(seed + 1)
    batch, time = 5, 16
    lengths = np.array([16, 2, 9, 5, 13], np.int32)
    split = np.array([7, 1, 3, 4, 12], np.int32)  # first chunk's length per row, 1 <= k < len
    x = rng.standard_normal((batch, time, spec.input_size)).astype(np.float32)
    whole = ortrun.run(sess, spec, x, lengths)

    first_t = int(split.max())
    first = ortrun.run(sess, spec, x[:, :first_t].copy(), split)
    rest = lengths - split
    second_x = np.zeros((batch, int(rest.max()), spec.input_size), np.float32)
    for i in range(batch):
        second_x[i, : rest[i]] = x[i, split[i] : lengths[i]]
    second = ortrun.run(sess, spec, second_x, rest, first[C.FINAL_H], first[C.FINAL_C])

    worst = max(float(np.abs(second[C.FINAL_H] - whole[C.FINAL_H]).max()),
                float(np.abs(second[C.FINAL_C] - whole[C.FINAL_C]).max()))
    if spec.task == C.MANY_TO_ONE:
        worst = max(worst, float(np.abs(second[C.OUTPUT] - whole[C.OUTPUT]).max()))
    else:
        for i in range(batch):
            joined = np.concatenate([first[C.OUTPUT][i, : split[i]], second[C.OUTPUT][i, : rest[i]]])
            worst = max(worst, float(np.abs(joined - whole[C.OUTPUT][i, : lengths[i]]).max()))
    return worst


def verify(sess: ort.InferenceSession, model: StackedLSTM, spec: C.ModelSpec,
           normalization: Normalization | None, *, tolerance: float = DEFAULT_TOLERANCE,
           seed: int = 0) -> dict[str, Any]:
    """Compare the graph with per-sequence PyTorch; raise :class:`VerificationError` past
    ``tolerance`` (absolute, float32). Returns the report stored in the model card."""
    cases = make_cases(spec, normalization, seed)
    rows = []
    worst = 0.0
    for case in cases:
        got = ortrun.run(sess, spec, case.x, case.lengths, case.h0, case.c0)
        err = max_abs_error(got, reference(model, spec, case, normalization))
        rows.append({"batch": int(case.x.shape[0]), "time": int(case.x.shape[1]),
                     "lengths": [int(v) for v in case.lengths], "max_abs_error": err})
        worst = max(worst, err)
    report: dict[str, Any] = {
        "reference": "per-sequence eager PyTorch (float32), padding filled with garbage",
        "tolerance": tolerance,
        "max_abs_error": worst,
        "cases": rows,
        "chunked_state_max_error": None,
    }
    if worst > tolerance:
        raise VerificationError(
            f"exported graph differs from PyTorch: max error {worst:.3g} > tolerance {tolerance:g} "
            f"(cases: {rows})", max_error=worst, tolerance=tolerance,
        )
    if spec.stateful:
        chunk = chunked_error(sess, spec, seed)
        report["chunked_state_max_error"] = chunk
        if chunk > tolerance:
            raise VerificationError(
                f"running in two chunks with the state carried differs from one run: max error "
                f"{chunk:.3g} > tolerance {tolerance:g}", max_error=chunk, tolerance=tolerance,
            )
    return report
