"""The transport-neutral inference request: what a decoded request means, for every front end.

A front end (REST JSON and binary in ``app.http.codec``, protobuf in gRPC) turns its wire form
into named numpy arrays and parameters; everything after that is here, once: which input and
output names and datatypes a model accepts, the request limits, the padded ``Sequences`` the
engine batches and the server-kept stream parameters (Triton's ``sequence_id``,
``sequence_start``, ``sequence_end``). Messages name the field, so every transport refuses the
same request with the same words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app import contract
from app.contract import ModelSpec
from app.v2.errors import InvalidInput
from app.v2.sequences import Sequences, StreamControl

# Open Inference Protocol datatype names <-> numpy dtypes (little-endian on the wire).
V2_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
V2_NAMES: dict[np.dtype, str] = {dt: name for name, dt in V2_DTYPES.items()}

# What each contract tensor must be sent as.
EXPECTED_DATATYPE: dict[str, str] = {
    contract.INPUT: "FP32",
    contract.SEQUENCE_LENS: "INT32",
    contract.INITIAL_H: "FP32",
    contract.INITIAL_C: "FP32",
}


@dataclass(frozen=True)
class Limits:
    """Request limits from the settings, checked while decoding."""

    max_batch_size: int
    max_sequence_length: int


@dataclass
class InferRequest:
    """A decoded request: the sequences, what to answer and how."""

    id: str | None
    sequences: Sequences
    outputs: tuple[str, ...]
    binary_outputs: frozenset[str] = field(default_factory=frozenset)
    stream: StreamControl | None = None


def check_input(name: str, datatype: object, spec: ModelSpec) -> tuple[str, np.dtype]:
    """An input ``name`` the model takes, sent as ``datatype``: its protocol datatype and numpy
    dtype; InvalidInput naming the input otherwise."""
    if name not in spec.input_names:
        if name in (contract.INITIAL_H, contract.INITIAL_C) and spec.bidirectional:
            raise InvalidInput(f"input '{name}' is not accepted: this model is bidirectional, and a backward "
                               "direction cannot carry state from one chunk to the next")
        raise InvalidInput(f"unknown input '{name}'; this model takes {list(spec.input_names)}")
    expected = EXPECTED_DATATYPE[name]
    if datatype != expected:
        raise InvalidInput(f"input '{name}' has datatype {datatype!r}; the model expects {expected}")
    return expected, V2_DTYPES[expected]


def check_output(name: object, spec: ModelSpec) -> str:
    """A requested output name the model has; InvalidInput naming it otherwise."""
    if name not in spec.output_names:
        if name in (contract.FINAL_H, contract.FINAL_C) and spec.bidirectional:
            raise InvalidInput(f"output '{name}' does not exist: this model is bidirectional, and its "
                               "state cannot be carried into another chunk")
        raise InvalidInput(f"unknown output {name!r}; this model has {list(spec.output_names)}")
    assert isinstance(name, str)
    return name


def parameters(raw: Any, where: str) -> dict[str, Any]:
    """A ``parameters`` member: absent or an object (inference and repository requests)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: 'parameters' must be a JSON object, got {type(raw).__name__}")
    return raw


def flag(params: dict[str, Any], key: str, where: str) -> bool | None:
    """A boolean parameter: absent (None) or a JSON boolean, never a string or a number."""
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidInput(f"{where}: parameters.{key} must be a JSON boolean (true or false), got {value!r}")
    return value


def check_limits(n: int, t: int, limits: Limits) -> None:
    """``n`` sequences of ``t`` steps within max_batch_size and max_sequence_length."""
    if n > limits.max_batch_size:
        raise InvalidInput(
            f"input '{contract.INPUT}' has {n} sequences; at most {limits.max_batch_size} per "
            "request (max_batch_size)"
        )
    if t > limits.max_sequence_length:
        raise InvalidInput(
            f"input '{contract.INPUT}' has {t} time steps; at most {limits.max_sequence_length} "
            "are accepted (max_sequence_length)"
        )


def to_sequences(tensors: dict[str, np.ndarray], spec: ModelSpec, limits: Limits) -> Sequences:
    """The named input arrays of one request as the engine's ``Sequences``, checked against the
    model (shape, features, limits, finite values, lengths, state shapes)."""
    x = tensors.get(contract.INPUT)
    if x is None:
        raise InvalidInput(f"input '{contract.INPUT}' is required")
    if x.ndim != 3:
        raise InvalidInput(
            f"input '{contract.INPUT}' must have shape [n, time, {spec.input_size}], "
            f"got {list(x.shape)}"
        )
    n, t, features = x.shape
    if features != spec.input_size:
        raise InvalidInput(
            f"input '{contract.INPUT}' has {features} features per step; the model expects "
            f"{spec.input_size}"
        )
    if n == 0 or t == 0:
        raise InvalidInput(f"input '{contract.INPUT}' is empty (shape {list(x.shape)})")
    check_limits(n, t, limits)
    if not np.isfinite(x).all():
        raise InvalidInput(f"input '{contract.INPUT}' contains NaN or infinite values")

    lengths = tensors.get(contract.SEQUENCE_LENS)
    if lengths is None:
        lengths = contract.full_lengths(n, t)
    else:
        if lengths.shape != (n,):
            raise InvalidInput(
                f"input '{contract.SEQUENCE_LENS}' must have shape [{n}] (one length per "
                f"sequence), got {list(lengths.shape)}"
            )
        try:
            contract.check_lengths(lengths, t)
        except contract.ContractError as exc:
            raise InvalidInput(str(exc)) from None

    h0 = tensors.get(contract.INITIAL_H)
    c0 = tensors.get(contract.INITIAL_C)
    if (h0 is None) != (c0 is None):
        raise InvalidInput(
            f"inputs '{contract.INITIAL_H}' and '{contract.INITIAL_C}' must be given together"
        )
    if h0 is not None and c0 is not None:
        want = (spec.num_layers, n, spec.hidden_size)
        for name, s in ((contract.INITIAL_H, h0), (contract.INITIAL_C, c0)):
            if s.shape != want:
                raise InvalidInput(f"input '{name}' must have shape {list(want)}, got {list(s.shape)}")
            if not np.isfinite(s).all():
                raise InvalidInput(f"input '{name}' contains NaN or infinite values")
    return Sequences(x, lengths, h0, c0)


SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")


def stream_control(params: Any, spec: ModelSpec, sequences: Sequences) -> StreamControl | None:
    """Server-kept state from the request's ``parameters`` (Triton's names, already as Python
    values), checked against the request: one sequence per chunk, no client-carried state beside
    it, no bidirectional model."""
    if not isinstance(params, dict) or not any(k in params for k in SEQUENCE_PARAMETERS):
        return None
    seq_id = params.get("sequence_id", 0)
    if isinstance(seq_id, bool) or not isinstance(seq_id, (int, str)):
        raise InvalidInput(f"parameters.sequence_id must be a string or an integer, got {seq_id!r}")
    flags = {}
    for name in ("sequence_start", "sequence_end"):
        value = params.get(name, False)
        if not isinstance(value, bool):
            raise InvalidInput(f"parameters.{name} must be a JSON boolean, got {value!r}")
        flags[name] = value
    if seq_id == 0 or seq_id == "":
        if any(flags.values()):
            raise InvalidInput("parameters.sequence_start/sequence_end need a non-zero sequence_id")
        return None
    if spec.bidirectional:
        raise InvalidInput("this model is bidirectional: a backward direction cannot carry state from one "
                           "chunk to the next, so it takes no sequence_id (send the whole sequence)")
    if sequences.initial_h is not None:
        raise InvalidInput(f"a request with parameters.sequence_id carries no '{contract.INITIAL_H}'/"
                           f"'{contract.INITIAL_C}': the server keeps the state of that sequence (use one or the other)")
    if sequences.n != 1:
        raise InvalidInput(f"a chunk of a server-kept sequence holds exactly one sequence: input "
                           f"'{contract.INPUT}' must have shape [1, time, {spec.input_size}], got {list(sequences.x.shape)}")
    return StreamControl(seq_id, flags["sequence_start"], flags["sequence_end"])
