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
``binary_data_output`` on the request.
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
class SequenceRequest:
    """One decoded inference request: ``n`` sequences padded to one time length ``t``.

    This is what the batcher queues; ``padding.merge`` pads several into one model call.
    """

    x: np.ndarray  # float32 [n, t, features]
    lengths: np.ndarray  # int32 [n], 1 <= length <= t
    initial_h: np.ndarray | None = None  # float32 [layers, n, hidden]
    initial_c: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def t(self) -> int:
        return int(self.x.shape[1])

    @property
    def steps(self) -> int:
        """Valid time steps in this request (the work it really asks for)."""
        return int(self.lengths.sum())


@dataclass
class InferRequest:
    """A decoded request: the sequences, what to answer and how."""

    id: str | None
    sequences: SequenceRequest
    outputs: tuple[str, ...]
    binary_outputs: frozenset[str] = field(default_factory=frozenset)


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
        raise InvalidInput(f"unknown input '{name}'; this model takes {list(spec.input_names)}")
    expected = EXPECTED_DATATYPE[name]
    if datatype != expected:
        raise InvalidInput(f"input '{name}' has datatype {datatype!r}; the model expects {expected}")
    dtype = V2_DTYPES[expected]
    count = math.prod(shape)
    params = entry.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"input '{name}': 'parameters' must be an object")
    size = params.get("binary_data_size")
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
    try:
        if dtype.kind == "f":
            with np.errstate(over="ignore"):  # out-of-range values become inf, refused below
                arr = np.asarray(data, dtype=dtype)
        else:
            arr = np.asarray(data)
            if arr.size and arr.dtype.kind not in "iu":
                raise ValueError(f"expected integers, got {arr.dtype.name} values")
            arr = arr.astype(dtype)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"input '{name}': 'data' is not a {expected} array: {exc}") from None
    if arr.size != count:
        raise InvalidInput(
            f"input '{name}': 'data' has {arr.size} elements but shape {list(shape)} needs {count}"
        )
    return name, arr.reshape(shape), offset


def _requested_outputs(doc: dict[str, Any], spec: ModelSpec) -> tuple[tuple[str, ...], frozenset[str]]:
    params = doc.get("parameters") or {}
    all_binary = bool(isinstance(params, dict) and params.get("binary_data_output"))
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
            raise InvalidInput(f"unknown output {name!r}; this model has {list(spec.output_names)}")
        if name not in names:
            names.append(name)
        p = out.get("parameters") or {}
        if all_binary or (isinstance(p, dict) and p.get("binary_data")):
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
    return InferRequest(req_id, _sequences(tensors, spec, limits), outputs, binary_outputs)


def _sequences(tensors: dict[str, np.ndarray], spec: ModelSpec, limits: Limits) -> SequenceRequest:
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
    return SequenceRequest(x, lengths, h0, c0)


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
