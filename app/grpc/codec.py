"""The protobuf codec: ``ModelInferRequest`` in, ``ModelInferResponse`` out.

Only the wire form is here; what a request means (names, datatypes, shapes, limits, sequences,
stream parameters) is :mod:`app.v2.request`, shared with REST, so both transports refuse the
same request with the same words. Tensors arrive either as ``raw_input_contents`` (one
little-endian buffer per input, in input order: tritonclient's default) or as the typed
``contents`` of each input (``fp32_contents`` for FP32, ``int_contents`` for INT32); answers go
out as ``raw_output_contents``, which every client reads.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from app import contract
from app.contract import ModelSpec
from app.grpc.protocol import pb
from app.v2 import request
from app.v2.errors import InvalidInput
from app.v2.request import V2_NAMES, InferRequest, Limits

# Protocol datatype -> the typed ``InferTensorContents`` field that carries it.
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}


def parameters(params: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as Python values (what REST's JSON gives)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which is not None else None
    return out


def _tensor(entry: Any, raw: bytes | None, spec: ModelSpec) -> np.ndarray:
    name = entry.name
    expected, dtype = request.check_input(name, entry.datatype, spec)
    shape = tuple(entry.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers, got {list(shape)}")
    count = math.prod(shape)
    typed = entry.HasField("contents")
    if raw is not None:
        if typed:
            raise InvalidInput(f"input '{name}' has both 'contents' and raw_input_contents; give exactly one")
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(f"input '{name}': raw_input_contents has {len(raw)} bytes; shape {list(shape)} "
                               f"of {expected} needs {count * dtype.itemsize}")
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
    field = CONTENTS_FIELD[expected]
    others = [f.name for f, _ in entry.contents.ListFields() if f.name != field]
    if others:
        raise InvalidInput(f"input '{name}' is {expected}: its values go in contents.{field}, not {others}")
    values = getattr(entry.contents, field)
    if len(values) != count:
        raise InvalidInput(f"input '{name}': contents.{field} has {len(values)} values but shape {list(shape)} needs {count}")
    arr = np.array(values, dtype=np.float64 if dtype.kind == "f" else np.int64)
    if dtype.kind != "f" and arr.size and (arr.min() < np.iinfo(dtype).min or arr.max() > np.iinfo(dtype).max):
        raise InvalidInput(f"input '{name}': contents.{field} holds values outside the {expected} range")
    return arr.astype(dtype).reshape(shape)


def decode_request(msg: Any, spec: ModelSpec, limits: Limits) -> InferRequest:
    """Decode and check one ``ModelInferRequest`` against the model; raises InvalidInput."""
    if not msg.inputs:
        raise InvalidInput("request needs a non-empty 'inputs' list")
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} buffers for {len(msg.inputs)} inputs; "
                           "give one per input, in input order, or none")
    for entry in msg.inputs:  # declared shape first: no array is built for a request over the limits
        if entry.name == contract.INPUT and len(entry.shape) == 3:
            request.check_limits(entry.shape[0], entry.shape[1], limits)
    tensors: dict[str, np.ndarray] = {}
    for i, entry in enumerate(msg.inputs):
        if entry.name in tensors:
            raise InvalidInput(f"input '{entry.name}' is given twice")
        tensors[entry.name] = _tensor(entry, raw[i] if raw else None, spec)
    names: list[str] = []
    for out in msg.outputs:
        name = request.check_output(out.name, spec)
        if name not in names:
            names.append(name)
    sequences = request.to_sequences(tensors, spec, limits)
    stream = request.stream_control(parameters(msg.parameters), spec, sequences)
    return InferRequest(msg.id or None, sequences, tuple(names) or spec.output_names, frozenset(), stream)


def encode_response(model_name: str, model_version: str, request_id: str | None, outputs: dict[str, np.ndarray]) -> Any:
    """A ``ModelInferResponse`` with every output in ``raw_output_contents``."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id or "")
    for name, arr in outputs.items():
        arr = np.ascontiguousarray(arr)
        response.outputs.add(name=name, datatype=V2_NAMES[arr.dtype], shape=arr.shape)
        response.raw_output_contents.append(arr.tobytes())
    return response
