"""The REST codec of the Open Inference Protocol: JSON tensors and the binary tensor extension.

What a request means once its tensors are arrays (names, datatypes, limits, sequences, stream
parameters) is :mod:`app.v2.request`, shared with every other transport; this module only reads
and writes the HTTP body.

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

The request nearly every client sends (one FP32 ``input``, names-only outputs, an id) is
decoded in one numpy pass once its text proves the general checks would pass
(:func:`common_request`); everything else, and every refusal, takes the general path.

Strict where a lenient decoder would guess: flags must be JSON booleans, ``data`` JSON numbers
(integers for INT32), ``parameters`` objects, and an input gives exactly one of ``data`` and
``parameters.binary_data_size``; anything else is refused with a message naming the field.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import orjson

from app import contract
from app.contract import ModelSpec
from app.v2 import request
from app.v2.errors import InvalidInput
from app.v2.request import V2_DTYPES, V2_NAMES, InferRequest, Limits
from app.v2.sequences import Sequences

__all__ = ["HEADER_LENGTH", "V2_DTYPES", "InferRequest", "Limits", "check_declared_limits", "common_request",
           "decode_document", "decode_request", "encode_response", "json_values"]

HEADER_LENGTH = "inference-header-content-length"

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
    return json_object(json_part, "a JSON object with an 'inputs' list"), binary


def json_object(raw: bytes | memoryview, expected: str = "a JSON object") -> dict[str, Any]:
    """A request body that must hold one JSON object (inference and repository calls alike)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"request body must be {expected}")
    return doc


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
    expected, dtype = request.check_input(name, datatype, spec)
    count = math.prod(shape)
    params = request.parameters(entry.get("parameters"), f"input '{name}'")
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
    params = request.parameters(doc.get("parameters"), "request")
    all_binary = bool(request.flag(params, "binary_data_output", "request"))
    raw = doc.get("outputs")
    if raw is None:
        names = spec.output_names
        return names, frozenset(names) if all_binary else frozenset()
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list of {\"name\": ...} objects")
    names: list[str] = []
    binary: set[str] = set()
    for out in raw:
        name = request.check_output(out.get("name") if isinstance(out, dict) else None, spec)
        if name not in names:
            names.append(name)
        own = request.flag(request.parameters(out.get("parameters"), f"output '{name}'"), "binary_data", f"output '{name}'")
        if own if own is not None else all_binary:  # the output's own setting wins
            binary.add(name)
    return tuple(names), frozenset(binary)


def decode_request(
    body: bytes, header_length: str | None, spec: ModelSpec, limits: Limits
) -> InferRequest:
    """Decode and check one inference request against the model; raises InvalidInput."""
    doc, binary = _parse_header(body, header_length)
    if header_length is None:
        common = common_request(body, doc, spec, limits)
        if common is not None:
            return common
    return decode_document(doc, binary, spec, limits)


_COMMON_KEYS = frozenset({"inputs", "outputs", "id"})
_COMMON_ENTRY = frozenset({"name", "shape", "datatype", "data"})
_COMMON_OUTPUT = frozenset({"name"})
_DATA_KEY = re.compile(rb'"data"\s*:\s*\[')
_EXACT = float(2**24)  # every integer below it is exact in float32, whichever way it is converted
_MIN, _MAX = np.minimum.reduce, np.maximum.reduce  # ``x.min()`` less its Python wrapper


def common_request(body: bytes, doc: dict[str, Any], spec: ModelSpec, limits: Limits) -> InferRequest | None:
    """The request nearly every client sends, its values converted in one numpy pass; None for
    anything else, which :func:`decode_document` then decodes (and refuses, with its messages).

    Why: the general path's numpy passes (the values' type found first, then a scan for
    booleans hidden as 0/1, a cast, a finiteness check) and its rule-by-rule glue cost the event
    loop 20-40 us a request more under load than the floor's bare
    ``np.asarray(data, dtype=float32)`` (``python -m bench.knockout --engine real``). That one
    pass alone would take what the protocol refuses (numeric strings, booleans as 1.0/0.0,
    nulls as NaN), so this path first proves from the body's text that there is none of it, and
    accepts only what the general path accepts, with the same array. Measured: the bench body
    decodes in 25.8 us against 32.2 (the floor's bare decode: 17.2), the event loop's CPU per
    request under load 0.92x (``bench.ab --interleave``, 16 pairs). What it requires:

    * the document: one ``input`` entry (name, shape, datatype FP32, data), at most ``outputs``
      (names only) and an ``id`` besides; the shape [n, t, features] within the model and the
      limits; ``data`` a list of n*t*features items;
    * the values' text: ``"data"`` first occurs in the body as that entry's key (no other key
      can be named so, and a string value cannot end in ``"data"`` followed by a colon), and
      between its ``[`` and the first ``]`` after it there is no quote (no string), no ``r`` and
      no ``f`` (no ``true``, no ``false``); that span holds every value, since a nested list
      makes the conversion below raise;
    * no null, no value beyond float32 and no integer that float32 cannot hold exactly (which the
      general path would convert through int64, this one through float64): every |value| < 2**24,
      NaN failing that too.

    A property test holds the two paths to the same answers (tests/app/test_protocol_properties.py)."""
    if not doc.keys() <= _COMMON_KEYS:
        return None
    inputs = doc.get("inputs")
    if type(inputs) is not list or len(inputs) != 1:
        return None
    entry = inputs[0]
    if type(entry) is not dict or entry.keys() != _COMMON_ENTRY or entry["name"] != contract.INPUT \
            or entry["datatype"] != "FP32":
        return None
    shape, data = entry["shape"], entry["data"]
    if type(shape) is not list or len(shape) != 3 or type(data) is not list:
        return None
    n, t, f = shape
    if type(n) is not int or type(t) is not int or type(f) is not int or f != spec.input_size \
            or not 0 < n <= limits.max_batch_size or not 0 < t <= limits.max_sequence_length or len(data) != n * t * f:
        return None
    req_id = doc.get("id")
    if req_id is not None and type(req_id) is not str:
        return None
    outputs = doc.get("outputs")
    names: tuple[str, ...] = spec.output_names
    if outputs is not None:
        if type(outputs) is not list:
            return None
        chosen: list[str] = []
        for out in outputs:
            if type(out) is not dict or out.keys() != _COMMON_OUTPUT or out["name"] not in spec.output_names:
                return None
            if out["name"] not in chosen:
                chosen.append(out["name"])
        names = tuple(chosen)
    at = body.find(b'"data"')
    key = _DATA_KEY.match(body, at) if at >= 0 else None
    if key is None:
        return None
    start = key.end()
    end = body.find(b"]", start)
    if end < 0 or body.find(b'"', start, end) >= 0 or body.find(b"r", start, end) >= 0 \
            or body.find(b"f", start, end) >= 0:
        return None
    try:
        # ``fromiter``, not ``asarray``: the count is known and every item a number, so numpy
        # need not first walk the list to discover its shape and type (that walk cost as many
        # instructions as orjson's parse of the whole body: ``python -m bench.instructions``).
        # As float64, JSON's own precision: nothing can overflow yet, so no ``np.errstate``
        # (a context manager per request). A nested list raises; a null becomes NaN.
        x = np.fromiter(data, np.float64, len(data))
    except (ValueError, TypeError, OverflowError):
        return None
    if not (-_EXACT < _MIN(x) and _MAX(x) < _EXACT):  # NaN fails too
        return None
    x = x.astype(contract.INPUT_DTYPE)  # as the general path converts: float64, then float32
    return InferRequest(req_id, Sequences(x.reshape(n, t, f), contract.full_lengths(n, t)), names, frozenset(), None)


def check_declared_limits(inputs: Any, limits: Limits) -> None:
    """Refuse an ``input`` whose *declared* shape breaks max_batch_size or max_sequence_length,
    before its data is turned into an array (``app.http.decoding`` calls it before parsing data)."""
    for entry in inputs if isinstance(inputs, list) else ():
        shape = entry.get("shape") if isinstance(entry, dict) and entry.get("name") == contract.INPUT else None
        if isinstance(shape, list) and len(shape) == 3 and all(type(d) is int for d in shape):
            request.check_limits(shape[0], shape[1], limits)


def decode_document(
    doc: dict[str, Any], binary: memoryview, spec: ModelSpec, limits: Limits
) -> InferRequest:
    """Decode a request whose JSON is already parsed (``data`` may already be a numpy array:
    ``app.http.decoding`` parses large bodies in slices); raises InvalidInput."""
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
    sequences = request.to_sequences(tensors, spec, limits)
    stream = request.stream_control(doc.get("parameters"), spec, sequences)
    return InferRequest(req_id, sequences, outputs, binary_outputs, stream)


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
