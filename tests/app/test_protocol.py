"""The KServe v2 codec on its own: JSON (flat and nested) and binary tensors, and every way a
request can be wrong. The end-to-end tests check the same over real HTTP."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

import httpx
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from app.contract import ModelSpec
from app.v2.errors import InvalidInput
from app.v2.request import Limits
from app.http.codec import decode_request, encode_response
from tests.conftest import Reference, Server

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
        (body(inp([None, 1.0, 1.0, 1.0], [1, 2, 2])), None, "only JSON numbers"),  # null is not a number
        (body(inp([1e39, 1.0, 1.0, 1.0], [1, 2, 2])), None, "NaN or infinite"),
        (body(inp([], [0, 2, 2])), None, "empty"),
        (body(inp([1.0] * 22, [1, 11, 2])), None, "at most 10"),
        (body(inp([1.0] * 36, [9, 2, 2])), None, "at most 8 per request"),
        (body(inp([1.0] * 4, [1, 2, -2])), None, "non-negative integers"),
        (body(inp([1.0] * 4, [1, 2, 2]), inp([3], [1], "sequence_lens", "INT32")), None, "between 1 and the time length 2"),
        (body(inp([1.0] * 4, [1, 2, 2]), inp([0], [1], "sequence_lens", "INT32")), None, "between 1"),
        (body(inp([1.0] * 4, [1, 2, 2]), inp([1.5], [1], "sequence_lens", "INT32")), None, "only JSON integers"),
        (body(inp([1.0] * 4, [1, 2, 2]), inp([1, 1], [2], "sequence_lens", "INT32")), None, "shape [1]"),
        (body(inp([1.0] * 4, [1, 2, 2]), inp([0.0] * 12, [3, 1, 4], "initial_h")), None, "given together"),
        (body(inp([1.0] * 4, [1, 2, 2]), inp([0.0] * 4, [1, 1, 4], "initial_h"), inp([0.0] * 4, [1, 1, 4], "initial_c")), None, "must have shape [3, 1, 4]"),
        (body(inp([1.0] * 4, [1, 2, 2]), inp([1.0] * 4, [1, 2, 2])), None, "given twice"),
        (body(inp([1.0] * 4, [1, 2, 2]), outputs=[{"name": "nope"}]), None, "unknown output 'nope'"),
        (body(inp([1.0] * 4, [1, 2, 2])), "abc", "must be an integer"),
        (body(inp([1.0] * 4, [1, 2, 2])), "999999", "outside the body"),
        (body(inp([1.0] * 4, [1, 2, 2]), id=5), None, "'id' must be a string"),
        # strict: JSON booleans, JSON numbers, parameters objects, one of data / binary_data_size
        (body(inp([True, 1.0, 1.0, 1.0], [1, 2, 2])), None, "input 'input': 'data' is not a FP32 array: it must hold only JSON numbers"),
        (body(inp([[1.0, 2.0], ["3", 4.0]], [1, 2, 2])), None, "only JSON numbers"),
        (body(inp([1.0] * 4, [1, 2, 2]), inp([True], [1], "sequence_lens", "INT32")), None, "only JSON integers"),
        (body({**inp([1.0] * 4, [1, 2, 2]), "parameters": [1]}), None, "input 'input': 'parameters' must be a JSON object"),
        (body(inp([1.0] * 4, [1, 2, 2]), parameters="binary"), None, "request: 'parameters' must be a JSON object"),
        (body(inp([1.0] * 4, [1, 2, 2]), parameters={"binary_data_output": "yes"}), None,
         "request: parameters.binary_data_output must be a JSON boolean (true or false), got 'yes'"),
        (body(inp([1.0] * 4, [1, 2, 2]), parameters={"binary_data_output": 1}), None, "must be a JSON boolean"),
        (body(inp([1.0] * 4, [1, 2, 2]), outputs=[{"name": "output", "parameters": {"binary_data": "yes"}}]), None,
         "output 'output': parameters.binary_data must be a JSON boolean"),
        (body(inp([1.0] * 4, [1, 2, 2]), outputs=[{"name": "output", "parameters": []}]), None,
         "output 'output': 'parameters' must be a JSON object"),
    ],
)
def test_bad_requests_name_the_problem(raw: bytes, header: str | None, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        decode(raw, header=header)
    assert message in err.value.message


def test_an_input_gives_exactly_one_of_data_and_binary_data_size() -> None:
    x = np.ones((1, 2, 2), np.float32)
    header = orjson.dumps({"inputs": [{**inp(x.ravel().tolist(), [1, 2, 2]), "parameters": {"binary_data_size": 16}}]})
    with pytest.raises(InvalidInput, match="input 'input' has both 'data' and parameters.binary_data_size"):
        decode(header + x.tobytes(), header=str(len(header)))
    with pytest.raises(InvalidInput, match="neither 'data' nor parameters.binary_data_size"):
        decode(body({"name": "input", "datatype": "FP32", "shape": [1, 2, 2]}))


def test_the_outputs_own_binary_data_wins_over_the_request_level_flag() -> None:
    x = inp([1.0] * 4, [1, 2, 2])
    outputs = [{"name": "output", "parameters": {"binary_data": False}}, {"name": "final_h"},
               {"name": "final_c", "parameters": {"binary_data": True}}]
    req = decode(body(x, outputs=outputs, parameters={"binary_data_output": True}))
    assert req.binary_outputs == {"final_h", "final_c"}
    req = decode(body(x, outputs=outputs, parameters={"binary_data_output": False}))
    assert req.binary_outputs == {"final_c"}
    req = decode(body(x, parameters={"binary_data_output": True}))  # no outputs named: all, binary
    assert req.binary_outputs == {"output", "final_h", "final_c"}


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


# -- the same rules over real HTTP, with the real client --------------------------------------

def test_tritonclient_per_output_binary_data_wins_over_binary_data_output(server: Server, reference: Reference) -> None:
    """tritonclient reserves binary_data_output for itself (it sets it when no output is named),
    so its request body is built by the client and the flag added as another client would."""
    x = np.random.default_rng(5).standard_normal((2, 4, 3)).astype(np.float32)
    inp_ = triton.InferInput("input", list(x.shape), "FP32")
    inp_.set_data_from_numpy(x)
    outputs = [triton.InferRequestedOutput("output", binary_data=False), triton.InferRequestedOutput("final_h")]
    raw, json_size = triton.InferenceServerClient.generate_request_body([inp_], outputs=outputs)
    header = orjson.loads(raw[:json_size])
    header["parameters"] = {"binary_data_output": True}
    new_header = orjson.dumps(header)
    resp = httpx.post(f"{server.url}/v2/models/uni/infer", content=new_header + raw[json_size:],
                      headers={"inference-header-content-length": str(len(new_header))})
    assert resp.status_code == 200, resp.text
    hlen = int(resp.headers["inference-header-content-length"])
    entries = {o["name"]: o for o in orjson.loads(resp.content[:hlen])["outputs"]}
    assert "data" in entries["output"] and "parameters" not in entries["output"]  # its own false won
    assert entries["final_h"]["parameters"]["binary_data_size"] == 2 * 2 * 16 * 4
    result = triton.InferenceServerClient.parse_response_body(resp.content, header_length=hlen)
    want = [reference.run("uni", s) for s in x]
    np.testing.assert_allclose(result.as_numpy("output"), np.stack([w["output"][0] for w in want]), atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("final_h"), np.concatenate([w["final_h"] for w in want], axis=1), atol=1e-5)


def test_tritonclient_sees_the_400_naming_the_field(server: Server) -> None:
    x = np.ones((1, 2, 3), np.float32)
    bad = triton.InferInput("input", list(x.shape), "FP32")
    bad.set_data_from_numpy(x, binary_data=False)
    bad._parameters["binary_data_size"] = x.nbytes  # a hand-built request giving both forms
    with pytest.raises(InferenceServerException, match="has both 'data' and parameters.binary_data_size") as err:
        triton.InferenceServerClient(server.hostport).infer("uni", [bad])
    assert err.value.status() == "400"


X = [1.0] * 6


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"inputs": [inp([True, *X[1:]], [1, 2, 3])]}, "only JSON numbers"),
        ({"inputs": [inp(["1.5", *X[1:]], [1, 2, 3])]}, "only JSON numbers"),
        ({"inputs": [{**inp(X, [1, 2, 3]), "parameters": "x"}]}, "'parameters' must be a JSON object"),
        ({"inputs": [inp(X, [1, 2, 3])], "parameters": [True]}, "request: 'parameters' must be a JSON object"),
        ({"inputs": [inp(X, [1, 2, 3])], "parameters": {"binary_data_output": "yes"}}, "binary_data_output must be a JSON boolean"),
        ({"inputs": [inp(X, [1, 2, 3])], "outputs": [{"name": "output", "parameters": {"binary_data": "yes"}}]},
         "binary_data must be a JSON boolean"),
        ({"inputs": [{**inp(X, [1, 2, 3]), "parameters": {"binary_data_size": 24}}]}, "has both 'data' and"),
    ],
)
def test_strict_protocol_over_http(server: Server, doc: dict, message: str) -> None:
    resp = httpx.post(f"{server.url}/v2/models/uni/infer", json=doc)
    assert resp.status_code == 400 and message in resp.json()["error"], resp.text
