"""Triton's extensions as Triton's own client calls them: the model configuration is truthful
and usable, and every unsupported extension is refused with 501 naming it."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import Reference, Server


def client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.hostport)


@pytest.mark.parametrize("model", ["uni", "bi"])
def test_model_config_describes_the_artifact_truthfully(server: Server, reference: Reference, model: str) -> None:
    spec = reference.spec(model)
    for version in ("", "1"):
        cfg = client(server).get_model_config(model, version)
        assert cfg["name"] == model and cfg["platform"] == "onnxruntime_onnx"
        # The state tensors carry the batch on their second axis: only max_batch_size 0 with
        # full dims can say so.
        assert cfg["max_batch_size"] == 0
        inputs = {i["name"]: i for i in cfg["input"]}
        assert list(inputs) == list(spec.input_names)
        assert inputs["input"] == {
            "name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NONE",
            "dims": [-1, -1, spec.input_size], "optional": False,
        }
        assert inputs["sequence_lens"]["data_type"] == "TYPE_INT32" and inputs["sequence_lens"]["dims"] == [-1]
        assert all(i["optional"] for n, i in inputs.items() if n != "input")
        outputs = {o["name"]: o["dims"] for o in cfg["output"]}
        assert outputs["output"] == ([-1, spec.output_size] if spec.task == "many_to_one" else [-1, -1, spec.output_size])
        assert cfg["parameters"]["max_sequences_per_batch"] == {"string_value": "32"}
        assert cfg["parameters"]["stateful"] == {"string_value": str(spec.stateful).lower()}
        if spec.stateful:  # server-kept state (sequence_id), batched oldest first
            seq = cfg["sequence_batching"]
            assert seq["max_sequence_idle_microseconds"] == 60_000_000 and "oldest" in seq
            assert seq["oldest"]["max_queue_delay_microseconds"] == 0  # the default: go when a slot frees
            assert "dynamic_batching" not in cfg  # one scheduler: a oneof in Triton's proto
        else:
            assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 0
            assert "sequence_batching" not in cfg
    if spec.stateful:
        assert inputs["initial_h"]["dims"] == [spec.num_layers, -1, spec.hidden_size]
        assert outputs["final_c"] == [spec.num_layers, -1, spec.hidden_size]
    else:
        assert "initial_h" not in inputs and "final_h" not in outputs


def test_model_config_of_an_unknown_model_or_version_is_404_naming_it(server: Server) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as err:
        client(server).get_model_config("nope")
    assert err.value.status() == "404"
    with pytest.raises(InferenceServerException, match="no loaded version '7'"):
        client(server).get_model_config("uni", "7")


def test_the_config_is_enough_to_drive_the_model(server: Server, reference: Reference) -> None:
    """What a generic Triton tool does: build the request from the config's required inputs
    (dims with -1 made concrete), send it, get the declared outputs back."""
    cfg = client(server).get_model_config("uni")
    required = [i for i in cfg["input"] if not i["optional"]]
    assert [i["name"] for i in required] == ["input"]
    shape = [2, 5] + required[0]["dims"][2:]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    inp = triton.InferInput("input", shape, "FP32")
    inp.set_data_from_numpy(x)
    result = client(server).infer("uni", [inp])
    for out in cfg["output"]:
        got = result.as_numpy(out["name"])
        assert len(got.shape) == len(out["dims"])
        assert all(d in (-1, g) for d, g in zip(out["dims"], got.shape, strict=True))
    np.testing.assert_allclose(result.as_numpy("output")[1], reference.run("uni", x[1])["output"][0], atol=1e-5)


def test_server_metadata_lists_the_served_extensions(server: Server) -> None:
    meta = client(server).get_server_metadata()
    assert {"binary_tensor_data", "model_configuration", "statistics", "model_repository"} <= set(meta["extensions"])


UNSUPPORTED_CALLS = {
    "trace": lambda c: c.get_trace_settings(),
    "trace (update)": lambda c: c.update_trace_settings("uni", {"trace_level": ["TIMESTAMPS"]}),
    "logging": lambda c: c.get_log_settings(),
    "logging (update)": lambda c: c.update_log_settings({"log_info": True}),
    "system shared memory": lambda c: c.get_system_shared_memory_status(),
    "system shared memory (register)": lambda c: c.register_system_shared_memory("r", "/key", 8),
    "CUDA shared memory": lambda c: c.get_cuda_shared_memory_status(),
}  # the model repository extension is served: tests/app/test_lifecycle.py


@pytest.mark.parametrize("call", list(UNSUPPORTED_CALLS))
def test_unsupported_extensions_are_refused_naming_the_extension(server: Server, call: str) -> None:
    extension = call.split(" (")[0]
    with pytest.raises(InferenceServerException) as err:
        UNSUPPORTED_CALLS[call](client(server))
    assert err.value.status() == "501"
    assert f"the {extension} extension is not supported" in err.value.message()


def test_generate_and_unknown_paths_say_what_is_wrong(server: Server) -> None:
    resp = httpx.post(f"{server.url}/v2/models/uni/generate", json={"text_input": "hi"})
    assert resp.status_code == 501 and "generate extension is not supported" in resp.json()["error"]
    resp = httpx.get(f"{server.url}/v2/nothing/here")
    assert resp.status_code == 404 and resp.json()["error"].startswith("no endpoint /v2/nothing/here")
    resp = httpx.delete(f"{server.url}/v2/health/live")
    assert resp.status_code == 405 and resp.json() == {"error": "DELETE is not allowed on /v2/health/live"}
