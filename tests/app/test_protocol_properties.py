"""Property tests of the request decoder (issue 15, item 6): whatever the body, header and
parameters, ``decode_request`` either raises InvalidInput (a 400 naming the problem) or returns
a request that the model really runs, with outputs of the right shape and finite values.

Bounded for CI by ``max_examples``; raise ``HYPOTHESIS_EXAMPLES`` for a longer run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import contract
from app.contract import ModelSpec
from app.v2.errors import InvalidInput
from app.http.codec import decode_request
from app.v2.request import V2_DTYPES, Limits

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "150"))
LIMITS = Limits(max_batch_size=8, max_sequence_length=16)
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def demo() -> tuple[object, ModelSpec]:
    import onnxruntime as ort

    (path,) = sorted((ROOT / "models" / "demo").glob("*/model.onnx"))[-1:]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess, ModelSpec.from_metadata(dict(sess.get_modelmeta().custom_metadata_map))


RAN: dict[str, int] = {"ran": 0, "refused": 0}


def runs(sess, spec: ModelSpec, body: bytes, header: str | None) -> None:
    """The property: InvalidInput, or a request the model runs to finite outputs."""
    try:
        req = decode_request(body, header, spec, LIMITS)
    except InvalidInput as exc:
        assert exc.message and exc.status == 400
        RAN["refused"] += 1
        return
    RAN["ran"] += 1
    seq = req.sequences
    assert 1 <= seq.n <= LIMITS.max_batch_size and 1 <= seq.t <= LIMITS.max_sequence_length
    assert seq.x.dtype == np.float32 and seq.x.shape == (seq.n, seq.t, spec.input_size)
    assert ((seq.lengths >= 1) & (seq.lengths <= seq.t)).all()
    assert set(req.outputs) <= set(spec.output_names) and req.binary_outputs <= set(req.outputs)
    feeds = contract.feeds(spec, seq.x, seq.lengths, seq.initial_h, seq.initial_c)
    wanted = list(req.outputs) or list(spec.output_names)  # "outputs": [] asks for none; ORT's run([]) gives all
    out = sess.run(wanted, feeds)
    for name, o in zip(wanted, out, strict=True):
        batch_axis = 1 if name in (contract.FINAL_H, contract.FINAL_C) else 0  # [layers, batch, hidden]
        assert o.shape[batch_axis] == seq.n and np.isfinite(o).all(), name


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=10,
)
datatypes = st.one_of(st.sampled_from([*V2_DTYPES, "BYTES"]), json_values)
shapes = st.one_of(st.lists(st.integers(min_value=-2, max_value=20), max_size=4), json_values)


@st.composite
def plausible_requests(draw: st.DrawFn, features: int = 4) -> tuple[bytes, str | None]:
    """Half valid requests (random sizes, lengths, JSON or binary, outputs), half the same with
    one or more things broken: shape, datatype, data length or values, binary sizes, lengths,
    wrong JSON types in outputs/parameters/id, a bad Inference-Header-Content-Length."""
    valid = draw(st.booleans())

    def pick(good, bad):  # the valid choice, or (when breaking) sometimes a bad one
        return good if valid else draw(st.one_of(st.just(good), bad))

    n = draw(st.integers(1, LIMITS.max_batch_size)) if valid else draw(st.integers(0, 10))
    t = draw(st.integers(1, LIMITS.max_sequence_length)) if valid else draw(st.integers(0, 20))
    f = pick(features, st.sampled_from([features - 1, 0, features + 1]))
    shape = pick([n, t, f], shapes)
    count = n * t * f
    binary = draw(st.booleans())
    data_len = pick(count, st.sampled_from([max(count - 1, 0), count + 1]))
    values = draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=data_len, max_size=data_len)) if data_len <= 300 else [0.5] * data_len
    if not valid and values and draw(st.booleans()):
        values[draw(st.integers(0, len(values) - 1))] = draw(numbers)
    entry: dict = {"name": pick("input", st.sampled_from(["sequence_lens", "bogus", ""])),
                   "datatype": pick("FP32", datatypes), "shape": shape}
    blobs = b""
    if binary:
        with np.errstate(over="ignore"):
            raw = np.asarray([v if isinstance(v, float) else 0.0 for v in values], np.float32).tobytes()
        entry["parameters"] = {"binary_data_size": pick(len(raw), st.sampled_from([len(raw) + 4, -1, "8", None]))}
        blobs += raw
    else:
        entry["data"] = values
    inputs = [entry]
    if draw(st.booleans()):
        good_lens = draw(st.lists(st.integers(1, t), min_size=n, max_size=n)) if t >= 1 else []
        lens = pick(good_lens, st.lists(st.integers(-(2**40), 2**40) | st.integers(0, t + 1), max_size=n + 1))
        inputs.append({"name": "sequence_lens", "datatype": pick("INT32", st.just("INT64")),
                       "shape": [len(lens)], "data": lens})
    doc: dict = {"inputs": inputs}
    if draw(st.booleans()):
        good_outputs = [{"name": "output", "parameters": {"binary_data": draw(st.booleans())}}]
        doc["outputs"] = pick(good_outputs, st.one_of(json_values, st.lists(
            st.fixed_dictionaries({"name": json_values, "parameters": json_values}), max_size=2)))
    if draw(st.booleans()):
        doc["parameters"] = pick({"binary_data_output": draw(st.booleans())}, json_values)
    if draw(st.booleans()):
        doc["id"] = pick(draw(st.text(max_size=8)), json_values)
    header = json.dumps(doc).encode()
    if not binary:
        return header, pick(None, st.sampled_from([str(len(header)), "abc", "-1", "0", str(len(header) + 10), "１"]))
    declared = pick(str(len(header)), st.sampled_from([str(len(header) - 1), str(len(header) + 3), "0", "1e3", "", " 5"]))
    return header + blobs, declared


@SETTINGS
@given(req=plausible_requests())
def test_plausible_requests_are_refused_or_run(demo, req: tuple[bytes, str | None]) -> None:
    runs(*demo, req[0], req[1])


def test_the_plausible_strategy_reaches_the_model() -> None:
    # guards the strategy above: a generator that only ever produced refusals would prove little
    print(f"decoder properties: {RAN['ran']} requests ran, {RAN['refused']} refused")
    assert RAN["ran"] >= EXAMPLES // 20 and RAN["refused"] >= EXAMPLES // 4, RAN


@SETTINGS
@given(body=st.binary(max_size=300), header=st.one_of(st.none(), st.text(max_size=6)))
def test_byte_garbage_is_refused(demo, body: bytes, header: str | None) -> None:
    runs(*demo, body, header)


@SETTINGS
@given(doc=json_values)
def test_any_json_document_is_refused_or_run(demo, doc: object) -> None:
    runs(*demo, json.dumps(doc).encode(), None)


def test_a_valid_request_decodes_and_runs(demo) -> None:
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 4], "data": [0.1] * 24},
                                    {"name": "sequence_lens", "datatype": "INT32", "shape": [2], "data": [3, 1]}]}).encode()
    runs(*demo, body, None)
    req = decode_request(body, None, demo[1], LIMITS)
    assert req.sequences.lengths.tolist() == [3, 1]


# -- the common requests' paths (codec.common_request, codec.common_binary_request) against the general decoder --
odd_values = st.sampled_from([True, False, None, "1.5", "x", "]", [0.5], [], {"a": 1}, 1e39, 1e308, -3.5e38, 2**24, -(2**24),
                              2**24 - 1, 2**53 + 2**29 + 1, 2**70, 0, 1, 0.0, 1.0, -0.0, 16777215.5])
odd_floats = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e39, -3.5e38, 3.4e38, -0.0, 2.0**-149])
sneaky_ids = st.sampled_from(['x"data', 'x"data":[', "r", "f", "plain", 'a"b', "]", "d\\u0061ta"])
COMMON = {f"{encoding} {outcome}": 0 for encoding in ("json", "binary") for outcome in ("taken", "declined")}


@st.composite
def common_documents(draw: st.DrawFn, binary: bool, features: int = 4) -> tuple[bytes, str | None]:
    """Requests of the common shape, JSON or binary (the body and its header length, None for
    JSON), about half valid and the rest broken or disguised in one place: an odd value among
    the data (booleans, nulls, numeric strings, nested items, huge or inexact numbers; NaN and
    infinities in binary), a shape off the limits or the model, a wrong count or binary size,
    nesting, extra or odd keys, outputs and flags, ids that try to fake the data key, a data key
    spelled with an escape. Any of them, valid or not, with odd ids, outputs, binary flags, key
    order and spacing."""
    broken = None if draw(st.booleans()) else draw(st.sampled_from([
        "value", "n", "t", "f", "count", "nested", "name", "shape", "datatype", "entry-params", "outputs", "doc-params", "escaped-key"]))
    n = draw(st.integers(1, LIMITS.max_batch_size)) if broken != "n" else draw(st.sampled_from([0, LIMITS.max_batch_size + 1]))
    t = draw(st.integers(1, LIMITS.max_sequence_length)) if broken != "t" else draw(st.sampled_from([0, LIMITS.max_sequence_length + 1]))
    f = features if broken != "f" else draw(st.sampled_from([features - 1, features + 1]))
    count = n * t * f
    values = draw(st.lists(st.floats(-1e3, 1e3, width=32) | st.integers(-(2**24) + 1, 2**24 - 1) | st.sampled_from([0, 1, 0.0, 1.0, -0.0]),
                           min_size=count, max_size=count))
    if broken == "value" and values:
        values[draw(st.integers(0, len(values) - 1))] = draw(odd_floats if binary else odd_values)
    data: object = values
    if broken == "nested" and count:
        data = [values[i:i + f] for i in range(0, count, f)]
    elif broken == "count":
        data = draw(st.sampled_from([values[:-1], [*values, 0.5]]))
    entry: dict = {"name": "input" if broken != "name" else "bogus",
                   "shape": [n, t, f] if broken != "shape" else draw(st.sampled_from([[n, t], [n, t, f, 1], [n, t, str(f)], [n, t, True]])),
                   "datatype": "FP32" if broken != "datatype" else draw(st.sampled_from(["FP64", "INT32", "fp32"]))}
    blob = b""
    if binary:
        with np.errstate(over="ignore"):
            blob = np.asarray(data if broken != "nested" else values, "<f4").tobytes()
        size: object = len(blob)
        if broken == "count":  # the declared size off the data, or bytes past it (the data off the shape is the case above)
            size = draw(st.sampled_from([len(blob) + 4, len(blob) - 4, str(len(blob)), float(len(blob)), None, True, "trailing"]))
            if size == "trailing":
                blob, size = blob + b"\0\0\0\0", len(blob)
        entry["parameters"] = {"binary_data_size": size}
        if broken == "nested":
            entry["data"] = values  # both data and binary_data_size
        elif broken == "entry-params":
            entry["parameters"]["binary_data"] = True
    else:
        entry["data"] = data
        if broken == "entry-params":
            entry["parameters"] = {}
    doc: dict = {"inputs": [entry]}
    if broken == "outputs":
        doc["outputs"] = draw(st.sampled_from([[{"name": "bogus"}], [{"name": "output", "parameters": {"binary_data": "true"}}],
                                               [{"name": "output", "parameters": {"binary_data": True, "x": 1}}],
                                               [{"name": "output", "parameters": []}], [{"name": "output", "x": 1}],
                                               "output", [["output"]]]))
    elif draw(st.booleans()):
        doc["outputs"] = draw(st.sampled_from([[{"name": "output"}], [{"name": "output"}, {"name": "output"}],
                                               [{"name": "final_h"}, {"name": "output"}], []]))
        for out in doc["outputs"]:
            if draw(st.booleans()):  # as tritonclient writes them, or odd but accepted ({}, null)
                out["parameters"] = draw(st.sampled_from([{"binary_data": True}, {"binary_data": False}, {}, None,
                                                          {"binary_data": None}]))
    if broken == "doc-params":
        doc["parameters"] = draw(st.sampled_from([{"binary_data_output": flag} for flag in (1, "true", [])]
                                                 + [{"sequence_id": 0}, {"binary_data_output": True, "x": 1}, []]))
    elif draw(st.booleans()):
        doc["parameters"] = draw(st.sampled_from([{"binary_data_output": True}, {"binary_data_output": False}, {},
                                                  {"binary_data_output": None}, None]))
    if draw(st.booleans()):
        doc["id"] = draw(sneaky_ids | st.integers(0, 3))
    if draw(st.booleans()):
        doc = dict(reversed(list(doc.items())))  # the id first: its text before the data's
    text = json.dumps(doc, separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (",", " : ")])))
    if broken == "escaped-key":
        text = text.replace('"data"', '"d\\u0061ta"').replace('"binary_data_size"', '"binary_d\\u0061ta_size"')
    header = text.encode()
    return (header + blob, str(len(header))) if binary else (header, None)


def _outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return fn(*args)
    except InvalidInput as exc:
        return exc.message


def _same(a: object, b: object) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    sa, sb = a.sequences, b.sequences  # type: ignore[attr-defined]
    return (a.id == b.id and a.outputs == b.outputs and a.binary_outputs == b.binary_outputs  # type: ignore[attr-defined]
            and a.stream == b.stream and sa.x.dtype == sb.x.dtype == np.float32  # type: ignore[attr-defined]
            and sa.x.shape == sb.x.shape and np.array_equal(sa.x, sb.x, equal_nan=True)
            and sa.lengths.dtype == sb.lengths.dtype and np.array_equal(sa.lengths, sb.lengths)
            and sa.initial_h is None and sb.initial_h is None and sa.initial_c is None and sb.initial_c is None)


@SETTINGS
@given(req=common_documents(binary=False))
def test_the_common_json_path_takes_only_what_the_general_path_accepts_and_answers_the_same(demo, req: tuple[bytes, str | None]) -> None:
    _common_against_general(demo[1], *req)


@SETTINGS
@given(req=common_documents(binary=True))
def test_the_common_binary_path_takes_only_what_the_general_path_accepts_and_answers_the_same(demo, req: tuple[bytes, str | None]) -> None:
    _common_against_general(demo[1], *req)


def _common_against_general(spec: ModelSpec, body: bytes, header: str | None) -> None:
    from app.http.codec import common_binary_request, common_request, decode_document

    at = len(body) if header is None else int(header)
    # as the server parses it (orjson reads an integer past 64 bits as a float)
    doc, binary = orjson.loads(body[:at]), memoryview(body)[at:]
    general = _outcome(decode_document, doc, binary, spec, LIMITS)
    fast = common_request(body, spec, LIMITS) if header is None else common_binary_request(doc, binary, spec, LIMITS)
    COMMON[f"{'json' if header is None else 'binary'} {'taken' if fast is not None else 'declined'}"] += 1
    if fast is not None:
        assert not isinstance(general, str), f"the common path took what the general path refuses: {general}"
        assert _same(fast, general)
    # and what a client sees, through the one entry point, is the general path's answer
    assert _same(_outcome(decode_request, body, header, spec, LIMITS), general)


def test_the_common_strategy_exercises_both_outcomes() -> None:
    print(f"common paths: {COMMON}")
    assert all(v >= EXAMPLES // 10 for v in COMMON.values()), COMMON


def test_a_plain_request_takes_the_common_path(demo) -> None:
    from app.http.codec import common_request

    spec = demo[1]
    values = np.random.default_rng(0).standard_normal(2 * 3 * 4).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "input", "shape": [2, 3, 4], "datatype": "FP32", "data": values.tolist()}],
                       "outputs": [{"name": "output"}], "id": "req-1"}).encode()
    req = common_request(body, spec, LIMITS)
    assert req is not None and req.id == "req-1" and req.outputs == ("output",)
    assert np.array_equal(req.sequences.x, values.reshape(2, 3, 4)) and req.sequences.lengths.tolist() == [3, 3]


def test_the_full_lengths_of_common_requests_are_one_read_only_array(demo) -> None:
    from app.http.codec import common_request

    body = json.dumps({"inputs": [{"name": "input", "shape": [2, 3, 4], "datatype": "FP32", "data": [0.5] * 24}]}).encode()
    first, second = (common_request(body, demo[1], LIMITS) for _ in range(2))
    assert first is not None and second is not None
    assert first.sequences.lengths is second.sequences.lengths  # shared: a cache lookup, not an array a request
    assert first.sequences.lengths.tolist() == [3, 3]
    with pytest.raises(ValueError, match="read-only"):  # so no holder can change another's lengths
        first.sequences.lengths[0] = 1


@pytest.mark.parametrize(("values", "exact"), [
    ([0.5, -3.0, 0.0], True), ([2.0**24 - 1, -(2.0**24 - 1)] * 8, True), ([-0.0], True),
    ([2.0**24], False), ([-(2.0**24)], False), ([0.5] * 20 + [2.0**24 + 2], False), ([-1e300, 0.5], False),
    ([float("inf")], False), ([0.5, float("nan")], False), ([float("nan"), 0.5], False),
])
def test_the_common_paths_range_check(values: list[float], exact: bool) -> None:
    from app.http.codec import _EXACT, _within

    x = np.asarray(values, np.float64)
    assert _within(x, _EXACT) is exact
    assert _within(x, math.inf) is bool(np.isfinite(x).all())  # the binary path's: finite
    with np.errstate(over="ignore"):
        y = x.astype(np.float32)  # -1e300 is -inf in float32
    assert _within(y, math.inf) is bool(np.isfinite(y).all())


def test_tritonclients_binary_requests_take_the_common_binary_path(demo) -> None:
    import tritonclient.http as triton

    from app.http.codec import common_binary_request

    spec = demo[1]
    values = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    tensor = triton.InferInput("input", [2, 3, 4], "FP32")
    tensor.set_data_from_numpy(values)  # binary by default
    for outputs, request_id, binary in (
        (None, "", set(spec.output_names)),  # no outputs named: tritonclient asks for all of them in binary
        ([triton.InferRequestedOutput("output")], "req-1", {"output"}),
        ([triton.InferRequestedOutput("output", binary_data=False)], "", set()),
    ):
        body, at = triton.InferenceServerClient.generate_request_body([tensor], outputs=outputs, request_id=request_id)
        assert at is not None
        req = common_binary_request(orjson.loads(body[:at]), memoryview(body)[at:], spec, LIMITS)
        assert req is not None, body[:at]
        assert req.id == (request_id or None) and req.binary_outputs == binary
        assert req.outputs == (spec.output_names if outputs is None else ("output",))
        assert np.array_equal(req.sequences.x, values) and req.sequences.lengths.tolist() == [3, 3]
        assert _same(req, decode_request(body, str(at), spec, LIMITS))


@pytest.mark.parametrize("data_text", [
    "[[0.5, 1, 2, 3], [4, 5, 6, 7]]",  # nested: simdjson's buffer would flatten it
    "[0.5, 1, 2, 3, 4, 5, 6, 7], \"data\": [9, 9, 9, 9, 9, 9, 9, 9]",  # a duplicate key: orjson keeps the last
    "[0.5, 1, 2, 3, 4, 5, 6, 99999999999999999999999]",  # past 64 bits: simdjson raises, orjson reads a float
    "[0.5, 1, 2, 3, 4, 5, 6, 1e400]",  # past float64
    "[0.5, 1, 2, 3, 4, 5, 6, null]",
    "[0.5, 1, 2, 3, 4, 5, 6, true]",
])
def test_the_common_path_declines_what_its_parser_would_read_otherwise(demo, data_text: str) -> None:
    from app.http.codec import common_request, decode_document

    spec = demo[1]
    body = ('{"inputs": [{"name": "input", "shape": [1, 2, 4], "datatype": "FP32", "data": ' + data_text + "}]}").encode()
    assert common_request(body, spec, LIMITS) is None
    try:
        general = _outcome(decode_document, orjson.loads(body), memoryview(b""), spec, LIMITS)
    except orjson.JSONDecodeError as exc:
        general = f"malformed JSON: {exc}"
    assert _same(_outcome(decode_request, body, None, spec, LIMITS), general)


@pytest.mark.parametrize("case", ["trailing bytes", "short", "nan", "inf", "size as text", "both data and size",
                                  "sequence parameters"])
def test_the_common_binary_path_declines_what_the_general_path_reads_otherwise(demo, case: str) -> None:
    from app.http.codec import common_binary_request, decode_document

    spec = demo[1]
    values = np.arange(8, dtype="<f4")
    if case in ("nan", "inf"):
        values[3] = float(case)
    blob = values.tobytes()
    entry: dict = {"name": "input", "shape": [1, 2, 4], "datatype": "FP32", "parameters": {"binary_data_size": len(blob)}}
    doc: dict = {"inputs": [entry]}
    if case == "trailing bytes":
        blob += b"\0" * 4
    elif case == "short":
        blob = blob[:-4]
        entry["parameters"]["binary_data_size"] = len(blob)
    elif case == "size as text":
        entry["parameters"]["binary_data_size"] = str(len(blob))
    elif case == "both data and size":
        entry["data"] = values.tolist()
    elif case == "sequence parameters":
        doc["parameters"] = {"sequence_id": 7, "sequence_start": True}
    header = orjson.dumps(doc)
    body = header + blob
    assert common_binary_request(doc, memoryview(blob), spec, LIMITS) is None
    general = _outcome(decode_document, doc, memoryview(blob), spec, LIMITS)
    assert isinstance(general, str) == (case != "sequence parameters"), general  # each refused, but the stream runs
    assert _same(_outcome(decode_request, body, str(len(header)), spec, LIMITS), general)
