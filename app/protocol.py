"""KServe v2 / Open Inference Protocol codec: JSON tensors and the binary tensor extension.

Decoding turns a raw request body into typed numpy tensors checked against the model's
contract; encoding turns output tensors into a response body. Both stay off pydantic and out
of Python loops over floats: on two cores the HTTP and decode cost competes with inference
itself, so bodies are parsed with orjson and tensors built with numpy (``np.asarray`` for JSON
data, ``np.frombuffer`` for binary data).

Binary tensor data (Triton's extension, the default of ``tritonclient.http``): the JSON header
is followed by the raw little-endian bytes of each tensor that declares
``parameters.binary_data_size``, in input order; the request header
``Inference-Header-Content-Length`` gives the JSON header's length. Outputs are returned the
same way when asked for with ``parameters.binary_data`` on a requested output or
``binary_data_output`` on the request; as in Triton, the output's own setting wins.

Strict where a lenient decoder would guess: flags must be JSON booleans, ``data`` JSON numbers
(integers for INT32), ``parameters`` objects, and an input gives exactly one of ``data`` and
``parameters.binary_data_size``; anything else is refused with a message naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from . import contract
from .contract import ModelSpec
from .errors import InvalidInput
from .sequences import Sequences, StreamControl

HEADER_LENGTH = "inference-header-content-length"

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


def _parse_header(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidInput(
                f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
            ) from None
        if not 0 < n <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes"
            )
        json_part, binary = body[:n], memoryview(body)[n:]
    else:
        json_part, binary = body, memoryview(b"")
    if not json_part:
        raise InvalidInput("request body is empty; expected a KServe v2 inference request")
    try:
        doc = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object with an 'inputs' list")
    return doc, binary


def parameters(raw: Any, where: str) -> dict[str, Any]:
    """A ``parameters`` member: absent or an object (inference and repository requests)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: 'parameters' must be a JSON object, got {type(raw).__name__}")
    return raw


def _flag(params: dict[str, Any], key: str, where: str) -> bool | None:
    """A boolean parameter: absent (None) or a JSON boolean, never a string or a number."""
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidInput(f"{where}: parameters.{key} must be a JSON boolean (true or false), got {value!r}")
    return value


_NUMBER_TYPES = frozenset({float, int})
_INT_TYPES = frozenset({int})


def _only(data: list[Any], allowed: frozenset[type]) -> bool:
    """Whether nested lists hold only values of the ``allowed`` types (``bool`` is not ``int``
    here: ``type(True) is bool``). One C-level pass per innermost list."""
    types = set(map(type, data))
    if types <= allowed:
        return True
    return types == {list} and all(_only(d, allowed) for d in data)


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers, got {raw!r}")
    return tuple(raw)


def _tensor(
    entry: dict[str, Any], binary: memoryview, offset: int, spec: ModelSpec
) -> tuple[str, np.ndarray, int]:
    """Decode one input entry; returns (name, array, new binary offset)."""
    name = entry.get("name")
    if not isinstance(name, str):
        raise InvalidInput("every input needs a string 'name'")
    shape = _shape(entry.get("shape"), name)
    datatype = entry.get("datatype")
    if name not in spec.input_names:
        if name in (contract.INITIAL_H, contract.INITIAL_C) and spec.bidirectional:
            raise InvalidInput(f"input '{name}' is not accepted: this model is bidirectional, and a backward "
                               "direction cannot carry state from one chunk to the next")
        raise InvalidInput(f"unknown input '{name}'; this model takes {list(spec.input_names)}")
    expected = EXPECTED_DATATYPE[name]
    if datatype != expected:
        raise InvalidInput(f"input '{name}' has datatype {datatype!r}; the model expects {expected}")
    dtype = V2_DTYPES[expected]
    count = math.prod(shape)
    params = parameters(entry.get("parameters"), f"input '{name}'")
    size = params.get("binary_data_size")
    if size is not None and "data" in entry:
        raise InvalidInput(
            f"input '{name}' has both 'data' and parameters.binary_data_size; give exactly one"
        )
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
        if size != count * dtype.itemsize:
            raise InvalidInput(
                f"input '{name}': binary_data_size {size} does not match shape {list(shape)} "
                f"of {expected} ({count * dtype.itemsize} bytes)"
            )
        if offset + size > len(binary):
            raise InvalidInput(
                f"input '{name}': binary_data_size {size} runs past the {len(binary) - offset} "
                "binary bytes left in the body"
            )
        arr = np.frombuffer(binary, dtype=dtype, count=count, offset=offset)
        return name, arr.reshape(shape), offset + size
    if "data" not in entry:
        raise InvalidInput(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
    data = entry["data"]
    # An ndarray here was already parsed strictly, in slices, by ``decoding`` (large bodies).
    arr = data if isinstance(data, np.ndarray) else json_values(data, name, expected)
    if arr.size != count:
        raise InvalidInput(
            f"input '{name}': 'data' has {arr.size} elements but shape {list(shape)} needs {count}"
        )
    return name, arr.reshape(shape), offset


def json_values(data: Any, name: object, expected: str) -> np.ndarray:
    """A JSON ``data`` value (flat or nested list, or a lone number) as an array of the protocol
    datatype ``expected``, refusing anything but JSON numbers (integers for INT types)."""
    dtype = V2_DTYPES[expected]
    if not isinstance(data, list):
        data = [data]  # a lone number; its count is checked against the shape by the caller
    try:
        raw = np.asarray(data)  # numpy finds the values' type: strings and nulls show in raw.dtype
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"input '{name}': 'data' is not a {expected} array: {exc}") from None
    allowed = "fiu" if dtype.kind == "f" else "iu"
    # A JSON boolean among numbers becomes 0.0 or 1.0 in ``raw``; only then is it worth
    # looking at every value's type (one C-level pass per innermost list).
    suspect = raw.size and (raw.dtype.kind not in allowed or ((raw == 0) | (raw == 1)).any())
    if suspect and not (raw.dtype.kind in allowed and _only(data, _NUMBER_TYPES if dtype.kind == "f" else _INT_TYPES)):
        kind = "JSON numbers" if dtype.kind == "f" else "JSON integers"
        raise InvalidInput(
            f"input '{name}': 'data' is not a {expected} array: it must hold only {kind} "
            "(no strings, booleans or nulls)"
        )
    if dtype.kind != "f" and raw.size and (raw.min() < np.iinfo(dtype).min or raw.max() > np.iinfo(dtype).max):
        raise InvalidInput(f"input '{name}': 'data' holds values outside the {expected} range")
    with np.errstate(over="ignore"):  # out-of-range floats become inf, refused later
        return raw.astype(dtype, copy=False)


def _requested_outputs(doc: dict[str, Any], spec: ModelSpec) -> tuple[tuple[str, ...], frozenset[str]]:
    params = parameters(doc.get("parameters"), "request")
    all_binary = bool(_flag(params, "binary_data_output", "request"))
    raw = doc.get("outputs")
    if raw is None:
        names = spec.output_names
        return names, frozenset(names) if all_binary else frozenset()
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list of {\"name\": ...} objects")
    names: list[str] = []
    binary: set[str] = set()
    for out in raw:
        name = out.get("name") if isinstance(out, dict) else None
        if name not in spec.output_names:
            if name in (contract.FINAL_H, contract.FINAL_C) and spec.bidirectional:
                raise InvalidInput(f"output '{name}' does not exist: this model is bidirectional, and its "
                                   "state cannot be carried into another chunk")
            raise InvalidInput(f"unknown output {name!r}; this model has {list(spec.output_names)}")
        if name not in names:
            names.append(name)
        own = _flag(parameters(out.get("parameters"), f"output '{name}'"), "binary_data", f"output '{name}'")
        if own if own is not None else all_binary:  # the output's own setting wins
            binary.add(name)
    return tuple(names), frozenset(binary)


def decode_request(
    body: bytes, header_length: str | None, spec: ModelSpec, limits: Limits
) -> InferRequest:
    """Decode and check one inference request against the model; raises InvalidInput."""
    doc, binary = _parse_header(body, header_length)
    return decode_document(doc, binary, spec, limits)


def check_declared_limits(inputs: Any, limits: Limits) -> None:
    """Refuse an ``input`` whose *declared* shape breaks max_batch_size or max_sequence_length,
    before its data is turned into an array (``app.decoding`` calls it before parsing data)."""
    for entry in inputs if isinstance(inputs, list) else ():
        shape = entry.get("shape") if isinstance(entry, dict) and entry.get("name") == contract.INPUT else None
        if isinstance(shape, list) and len(shape) == 3 and all(type(d) is int for d in shape):
            _check_limits(shape[0], shape[1], limits)


def _check_limits(n: int, t: int, limits: Limits) -> None:
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


def decode_document(
    doc: dict[str, Any], binary: memoryview, spec: ModelSpec, limits: Limits
) -> InferRequest:
    """Decode a request whose JSON is already parsed (``data`` may already be a numpy array:
    ``app.decoding`` parses large bodies in slices); raises InvalidInput."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("request needs a non-empty 'inputs' list")
    check_declared_limits(inputs, limits)
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for entry in inputs:
        if not isinstance(entry, dict):
            raise InvalidInput("each item of 'inputs' must be an object")
        name, arr, offset = _tensor(entry, binary, offset, spec)
        if name in tensors:
            raise InvalidInput(f"input '{name}' is given twice")
        tensors[name] = arr
    if offset != len(binary):
        raise InvalidInput(
            f"body has {len(binary) - offset} binary bytes that no input's binary_data_size claims"
        )
    outputs, binary_outputs = _requested_outputs(doc, spec)
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise InvalidInput("'id' must be a string")
    sequences = _sequences(tensors, spec, limits)
    return InferRequest(req_id, sequences, outputs, binary_outputs, _stream(doc, spec, sequences))


SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")


def _stream(doc: dict[str, Any], spec: ModelSpec, sequences: Sequences) -> StreamControl | None:
    """Server-kept state from the request's parameters (Triton's names), checked against the
    request: one sequence per chunk, no client-carried state beside it, no bidirectional model."""
    params = doc.get("parameters")
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


def _sequences(tensors: dict[str, np.ndarray], spec: ModelSpec, limits: Limits) -> Sequences:
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
    _check_limits(n, t, limits)
    if not np.isfinite(x).all():
        raise InvalidInput(f"input '{contract.INPUT}' contains NaN or infinite values")

    lengths = tensors.get(contract.SEQUENCE_LENS)
    if lengths is None:
        lengths = np.full(n, t, dtype=contract.LENGTHS_DTYPE)
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


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    binary_outputs: frozenset[str],
) -> tuple[bytes, int | None]:
    """Encode outputs; returns (body, JSON header length when binary data follows, else None)."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, arr in outputs.items():
        arr = np.ascontiguousarray(arr)
        entry: dict[str, Any] = {"name": name, "datatype": V2_NAMES[arr.dtype], "shape": list(arr.shape)}
        if name in binary_outputs:
            raw = arr.tobytes()  # the outputs are native float32, little-endian on x86 and arm64
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = arr.reshape(-1)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": entries}
    if request_id is not None:
        doc["id"] = request_id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
