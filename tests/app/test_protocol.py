"""The KServe v2 codec on its own: JSON (flat and nested) and binary tensors, and every way a
request can be wrong. The end-to-end tests check the same over real HTTP."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from app.contract import ModelSpec
from app.errors import InvalidInput
from app.protocol import Limits, decode_request, encode_response

SPEC = ModelSpec("many_to_one", input_size=2, hidden_size=4, num_layers=3, output_size=1)
BI = ModelSpec("many_to_many", input_size=2, hidden_size=4, num_layers=1, output_size=1, bidirectional=True)
LIMITS = Limits(max_batch_size=8, max_sequence_length=10)


def body(*inputs: dict, **extra: object) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def inp(data: object, shape: list[int], name: str = "input", datatype: str = "FP32") -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def decode(raw: bytes, spec: ModelSpec = SPEC, header: str | None = None):
    return decode_request(raw, header, spec, LIMITS)


def test_flat_and_nested_json_decode_to_the_same_tensor() -> None:
    flat = decode(body(inp(list(range(12)), [2, 3, 2])))
    nested = decode(body(inp(np.arange(12).reshape(2, 3, 2).tolist(), [2, 3, 2])))
    np.testing.assert_array_equal(flat.sequences.x, nested.sequences.x)
    assert flat.sequences.x.dtype == np.float32
    np.testing.assert_array_equal(flat.sequences.lengths, [3, 3])
    assert flat.outputs == ("output", "final_h", "final_c")


def test_binary_tensors_follow_the_json_header() -> None:
    x = np.random.default_rng(0).standard_normal((2, 4, 2)).astype(np.float32)
    lens = np.array([4, 2], np.int32)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [2, 4, 2], "parameters": {"binary_data_size": x.nbytes}},
                {"name": "sequence_lens", "datatype": "INT32", "shape": [2], "parameters": {"binary_data_size": 8}},
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    )
    req = decode(header + x.tobytes() + lens.tobytes(), header=str(len(header)))
    np.testing.assert_array_equal(req.sequences.x, x)
    np.testing.assert_array_equal(req.sequences.lengths, lens)
    assert req.outputs == ("output",) and req.binary_outputs == {"output"}


@pytest.mark.parametrize(
    ("raw", "header", "message"),
    [
        (b"{not json", None, "malformed JSON"),
        (b"", None, "empty"),
        (b"[1, 2]", None, "JSON object"),
        (body(), None, "non-empty 'inputs'"),
        (body(inp([1.0] * 4, [1, 2, 2], name="x")), None, "unknown input 'x'"),
        (body(inp([1.0] * 4, [1, 2, 2], datatype="FP64")), None, "datatype 'FP64'"),
        (body(inp([1.0] * 4, [1, 2, 2], datatype="BYTES")), None, "expects FP32"),
        (body(inp([1.0] * 4, [2, 2])), None, "must have shape [n, time, 2]"),
        (body(inp([1.0] * 6, [1, 2, 3])), None, "3 features"),
        (body(inp([1.0] * 5, [1, 2, 2])), None, "has 5 elements"),
        (body(inp(["a"] * 4, [1, 2, 2])), None, "not a FP32 array"),
        (body(inp([[1.0, 2.0], [3.0]], [1, 1, 3])), None, "not a FP32 array"),
        (body(inp([None, 1.0, 1.0, 1.0], [1, 2, 2])), None, "NaN or infinite"),
        (body(inp([1e39, 1.0, 1.0, 1.0], [1, 2, 2])), None, "NaN or infinite"),
        (body(inp([], [0, 2, 2])), None, "empty"),
        (body(inp([1.0] * 22, [1, 11, 2])), None, "at most 10"),
        (body(inp([1.0] * 36, [9, 2, 2])), None, "at most 8 per request"),
        (body(inp([1.0] * 4, [1, 2, -2])), None, "non-negative integers"),
        (body(inp([1.0] * 4, [1, 2, 2]), inp([3], [1], "sequence_lens", "INT32")), None, "between 1 and the time length 2"),
        (body(inp([1.0] * 4, [1, 2, 2]), inp([0], [1], "sequence_lens", "INT32")), None, "between 1"),
        (body(inp([1.0] * 4, [1, 2, 2]), inp([1.5], [1], "sequence_lens", "INT32")), None, "expected integers"),
        (body(inp([1.0] * 4, [1, 2, 2]), inp([1, 1], [2], "sequence_lens", "INT32")), None, "shape [1]"),
        (body(inp([1.0] * 4, [1, 2, 2]), inp([0.0] * 12, [3, 1, 4], "initial_h")), None, "given together"),
        (body(inp([1.0] * 4, [1, 2, 2]), inp([0.0] * 4, [1, 1, 4], "initial_h"), inp([0.0] * 4, [1, 1, 4], "initial_c")), None, "must have shape [3, 1, 4]"),
        (body(inp([1.0] * 4, [1, 2, 2]), inp([1.0] * 4, [1, 2, 2])), None, "given twice"),
        (body(inp([1.0] * 4, [1, 2, 2]), outputs=[{"name": "nope"}]), None, "unknown output 'nope'"),
        (body(inp([1.0] * 4, [1, 2, 2])), "abc", "must be an integer"),
        (body(inp([1.0] * 4, [1, 2, 2])), "999999", "outside the body"),
        (body(inp([1.0] * 4, [1, 2, 2]), id=5), None, "'id' must be a string"),
    ],
)
def test_bad_requests_name_the_problem(raw: bytes, header: str | None, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        decode(raw, header=header)
    assert message in err.value.message


def test_state_inputs_only_for_unidirectional_models() -> None:
    raw = body(inp([1.0] * 4, [1, 2, 2]), inp([0.0] * 4, [1, 1, 4], "initial_h"))
    with pytest.raises(InvalidInput, match="input 'initial_h' is not accepted: this model is bidirectional"):
        decode(raw, spec=BI)


def test_binary_sizes_are_checked() -> None:
    header = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2, 2], "parameters": {"binary_data_size": 12}}]})
    with pytest.raises(InvalidInput, match="does not match shape"):
        decode(header + b"\0" * 12, header=str(len(header)))
    header = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2, 2], "parameters": {"binary_data_size": 16}}]})
    with pytest.raises(InvalidInput, match="runs past"):
        decode(header + b"\0" * 8, header=str(len(header)))
    with pytest.raises(InvalidInput, match="binary bytes that no input"):
        decode(header + b"\0" * 20, header=str(len(header)))
    nan = np.full((1, 2, 2), np.nan, np.float32).tobytes()
    with pytest.raises(InvalidInput, match="NaN"):
        decode(header + nan, header=str(len(header)))


def test_encode_json_and_binary_round_trip() -> None:
    out = {"output": np.array([[1.5], [-2.25]], np.float32), "final_h": np.zeros((3, 2, 4), np.float32)}
    raw, hlen = encode_response("m", "1", "req-1", out, frozenset())
    assert hlen is None
    doc = orjson.loads(raw)
    assert doc["id"] == "req-1" and doc["model_version"] == "1"
    assert doc["outputs"][0] == {"name": "output", "datatype": "FP32", "shape": [2, 1], "data": [1.5, -2.25]}
    raw, hlen = encode_response("m", "1", None, out, frozenset({"final_h"}))
    doc = orjson.loads(raw[:hlen])
    entry = doc["outputs"][1]
    assert entry["parameters"]["binary_data_size"] == 3 * 2 * 4 * 4 and "data" not in entry
    np.testing.assert_array_equal(np.frombuffer(raw[hlen:], np.float32).reshape(3, 2, 4), out["final_h"])
