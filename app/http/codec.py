"""The REST codec of the Open Inference Protocol: JSON tensors and the binary tensor extension.

What a request means once its tensors are arrays (names, datatypes, limits, sequences, stream
parameters) is :mod:`app.v2.request`, shared with every other transport; this module only reads
and writes the HTTP body.

Decoding turns a raw request body into typed numpy tensors checked against the model's
contract; encoding turns output tensors into a response body. Both stay off pydantic and out
of Python loops over floats: on two cores the HTTP and decode cost competes with inference
itself, so bodies are parsed with orjson and tensors built with numpy (``np.asarray`` for JSON
data, ``np.frombuffer`` for binary data), the common request's values by simdjson straight
into an array.

Binary tensor data (Triton's extension, the default of ``tritonclient.http``): the JSON header
is followed by the raw little-endian bytes of each tensor that declares
``parameters.binary_data_size``, in input order; the request header
``Inference-Header-Content-Length`` gives the JSON header's length. Outputs are returned the
same way when asked for with ``parameters.binary_data`` on a requested output or
``binary_data_output`` on the request; as in Triton, the output's own setting wins.

The request nearly every client sends (one FP32 ``input``, outputs by name, an id, binary
flags) is decoded by a short path once it is shown to be that request: JSON without a Python
object per value (:func:`common_request`), binary without the general path's rule-by-rule checks
(:func:`common_binary_request`); everything else, and every refusal, takes the general path.

Strict where a lenient decoder would guess: flags must be JSON booleans, ``data`` JSON numbers
(integers for INT32), ``parameters`` objects, and an input gives exactly one of ``data`` and
``parameters.binary_data_size``; anything else is refused with a message naming the field.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import numpy as np
import orjson
import simdjson

from app import contract
from app.contract import ModelSpec
from app.v2 import request
from app.v2.errors import InvalidInput
from app.v2.request import V2_DTYPES, V2_NAMES, InferRequest, Limits
from app.v2.sequences import Sequences

__all__ = ["DATA_KEY", "HEADER_LENGTH", "V2_DTYPES", "InferRequest", "Limits", "check_declared_limits",
           "common_binary_request", "common_request", "decode_document", "decode_request", "encode_response",
           "json_values"]

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
    if header_length is None:
        common = common_request(body, spec, limits)
        if common is not None:
            return common
    doc, binary = _parse_header(body, header_length)
    if header_length is not None:
        common = common_binary_request(doc, binary, spec, limits)
        if common is not None:
            return common
    return decode_document(doc, binary, spec, limits)


_COMMON_KEYS = frozenset({"inputs", "outputs", "id", "parameters"})
_JSON_ENTRY = frozenset({"name", "shape", "datatype", "data"})
_BINARY_ENTRY = frozenset({"name", "shape", "datatype", "parameters"})
_OUTPUT_KEYS = (frozenset({"name"}), frozenset({"name", "parameters"}))
DATA_KEY = re.compile(rb'"data"\s*:\s*\[')  # a ``data`` key and its array's ``[`` (decoding's slices too)
_EXACT = float(2**24)  # every integer below it is exact in float32, whichever way it is converted


def _within(x: np.ndarray, bound: float) -> bool:
    """Every value of ``x`` (not empty) within (-bound, bound); a NaN is not.

    Why ``argmin``/``argmax``: numpy's ``min``/``max`` and ``isfinite(x).all()`` run ufunc loops
    and reductions, 1.1 us a reduction on the bench body through the iterator machinery (whose
    code is also a good part of what numpy costs the event loop's instruction cache); the two
    index searches (which stop at a NaN) and their two values cost 0.56 us together."""
    return -bound < x.item(x.argmin()) and x.item(x.argmax()) < bound


def _common_flag(params: object, key: str, default: bool) -> bool | None:
    """A flag in a ``parameters`` object of the common request, which holds at most ``key``: its
    JSON boolean, ``default`` when the object, the key or its value is absent (as the general
    path reads them), None (decline) for anything else."""
    if params is None:
        return default
    if type(params) is not dict or not params.keys() <= {key}:
        return None
    value = params.get(key)
    if value is None:
        return default
    return value if type(value) is bool else None


class _Common(NamedTuple):
    """What the common request's JSON says once its checks pass (the values come separately)."""

    entry: dict[str, Any]
    shape: tuple[int, int, int]
    id: str | None
    outputs: tuple[str, ...]
    binary_outputs: frozenset[str]

    def request(self, values: np.ndarray) -> InferRequest:
        """The decoded request, its input's flat float32 ``values`` in hand (their count checked)."""
        n, t, f = self.shape
        return InferRequest(self.id, Sequences(values.reshape(n, t, f), contract.full_lengths(n, t)),
                            self.outputs, self.binary_outputs, None)


def _common_document(doc: object, entry_keys: frozenset[str], spec: ModelSpec, limits: Limits) -> _Common | None:
    """The checks both common paths make on the parsed JSON: one FP32 ``input`` entry with
    exactly ``entry_keys``, a shape [n, t, features] within the model and the limits, at most
    ``outputs`` (names, each with at most a boolean ``binary_data``), an ``id`` and
    ``parameters`` holding at most a boolean ``binary_data_output``. None for anything else."""
    if type(doc) is not dict or not doc.keys() <= _COMMON_KEYS:
        return None
    inputs = doc.get("inputs")
    if type(inputs) is not list or len(inputs) != 1:
        return None
    entry = inputs[0]
    if type(entry) is not dict or entry.keys() != entry_keys or entry["name"] != contract.INPUT \
            or entry["datatype"] != "FP32":
        return None
    shape = entry["shape"]
    if type(shape) is not list or len(shape) != 3:
        return None
    n, t, f = shape
    if type(n) is not int or type(t) is not int or type(f) is not int or f != spec.input_size \
            or not 0 < n <= limits.max_batch_size or not 0 < t <= limits.max_sequence_length:
        return None
    req_id = doc.get("id")
    if req_id is not None and type(req_id) is not str:
        return None
    all_binary = _common_flag(doc.get("parameters"), "binary_data_output", False)
    if all_binary is None:
        return None
    outputs = doc.get("outputs")
    if outputs is None:
        names = spec.output_names
        return _Common(entry, (n, t, f), req_id, names, frozenset(names) if all_binary else frozenset())
    if type(outputs) is not list:
        return None
    chosen: list[str] = []
    binary: set[str] = set()
    for out in outputs:
        if type(out) is not dict or out.keys() not in _OUTPUT_KEYS or out["name"] not in spec.output_names:
            return None
        own = _common_flag(out.get("parameters"), "binary_data", all_binary)
        if own is None:
            return None
        if out["name"] not in chosen:
            chosen.append(out["name"])
        if own:  # as the general path: the output's own setting wins, any mention asking counts
            binary.add(out["name"])
    return _Common(entry, (n, t, f), req_id, tuple(chosen), frozenset(binary))


def common_request(body: bytes, spec: ModelSpec, limits: Limits) -> InferRequest | None:
    """The JSON request nearly every client sends, its values parsed straight into an array;
    None for anything else, which :func:`decode_document` then decodes (and refuses, with its
    messages).

    Why: parsing the whole body into Python objects makes a float object per value, which numpy
    then reads back one at a time (``fromiter``): most of what decoding cost the event loop. Here
    the values' text is cut out of the body, the rest (the small skeleton) is parsed by orjson
    and checked as before, and the values are parsed by simdjson directly into a float64 buffer
    (``Array.as_buffer``: no object per value). The bench body (400 values, 7.9 KB) decodes in
    9.8 us against 18.5 (``timeit``). (A path of its own at all because the general path's numpy
    passes and rule-by-rule glue cost 20-40 us a request more than the floor's bare decode:
    ``python -m bench.knockout``.) It accepts only what the general path accepts, with the same
    array. What it requires:

    * the document: what :func:`_common_document` checks, the entry's ``data`` a flat list of
      n*t*features JSON numbers;
    * the values' text: ``"data"`` first occurs in the body as that entry's key (no other key
      can be named so, and a string value cannot end in ``"data"`` followed by a colon): the
      skeleton, the body with that array emptied, must parse and hold it as that entry's empty
      ``data`` (a duplicate key or a ``data`` elsewhere leaves another array there); between its
      ``[`` and the first ``]`` after it there is no quote (no string, so that ``]`` closes it) and
      no ``[`` (simdjson's buffer would flatten a nested list); booleans, nulls and objects fail
      the conversion;
    * no value beyond float32 and no integer that float32 cannot hold exactly (which the general
      path would convert through int64, this one through float64): every |value| < 2**24.
      Both parsers round JSON's decimal text to the nearest double, so the values are the ones
      orjson gives.

    A property test holds the two paths to the same answers (tests/app/test_protocol_properties.py)."""
    at = body.find(b'"data"')
    key = DATA_KEY.match(body, at) if at >= 0 else None
    if key is None:
        return None
    start = key.end()
    end = body.find(b"]", start)
    if end < 0 or body.find(b'"', start, end) >= 0 or body.find(b"[", start, end) >= 0:
        return None
    try:
        doc = orjson.loads(body[:start] + body[end:])
    except orjson.JSONDecodeError:
        return None
    common = _common_document(doc, _JSON_ENTRY, spec, limits)
    if common is None or common.entry["data"] != []:
        return None
    try:
        # A parser per call: one holds its last document, and a new one costs ~0.1 us. As
        # float64, JSON's own precision: nothing can overflow yet, so no ``np.errstate``.
        x = np.frombuffer(simdjson.Parser().parse(body[start - 1 : end + 1]).as_buffer(of_type="d"), np.float64)
    except (ValueError, TypeError, RuntimeError):  # not JSON's number syntax, not a number, past 64 bits
        return None
    if x.size != math.prod(common.shape) or not _within(x, _EXACT):
        return None
    return common.request(x.astype(contract.INPUT_DTYPE))  # as the general path converts: float64, then float32


def common_binary_request(doc: dict[str, Any], binary: memoryview, spec: ModelSpec, limits: Limits) -> InferRequest | None:
    """The binary request nearly every client sends (``tritonclient.http``'s default), its JSON
    header already parsed: the input's bytes taken as they are; None for anything else, which
    :func:`decode_document` then decodes (and refuses, with its messages).

    Why: the general path's rule-by-rule checks cost the event loop 8.7 us on the bench body,
    this one 6.4 (``timeit``; with the header's parse, ``decode_request`` 8.1 against 10.4), for
    the same array: 6 % of the loop's instructions a binary request (``bench.instructions``).
    It requires what :func:`_common_document` checks, the entry's ``parameters`` holding only
    ``binary_data_size``, an integer equal to the shape's bytes and to every binary byte in the
    body, and only finite values."""
    common = _common_document(doc, _BINARY_ENTRY, spec, limits)
    if common is None:
        return None
    params = common.entry["parameters"]
    if type(params) is not dict or params.keys() != {"binary_data_size"}:
        return None
    size = params["binary_data_size"]
    if type(size) is not int or size != len(binary) or size != math.prod(common.shape) * contract.INPUT_DTYPE.itemsize:
        return None
    x = np.frombuffer(binary, contract.INPUT_DTYPE)
    return common.request(x) if _within(x, math.inf) else None  # finite


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
