"""The gRPC front end from real clients (tritonclient.grpc, grpcio stubs) against a real server.

Every RPC answers what its REST twin answers; tensors in both forms; exactness of concurrent
ragged requests; statistics count both transports; each status code of issue 21; health,
reflection and the token. Runs in one process and (``LSTM_SERVE_TEST_WORKERS=2``) two workers.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from tests.conftest import Reference, Server, start_server

TOL = 1e-5
SERVICE = "inference.GRPCInferenceService"


def _input(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> tg.InferInput:
    i = tg.InferInput(name, list(x.shape), datatype)
    i.set_data_from_numpy(x)
    return i


def _code(exc: InferenceServerException) -> str:
    return str(exc.status())


def _raw(target: str, method: str, request: object, response_type: type, metadata: tuple = (), timeout: float = 30):
    """A unary call with plain grpcio (tritonclient hides trailing metadata); returns
    (response, call) or raises grpc.RpcError."""
    with grpc.insecure_channel(target) as channel:
        rpc = channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=response_type.FromString)
        return rpc.with_call(request, metadata=metadata, timeout=timeout)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[tg.InferenceServerClient]:
    c = tg.InferenceServerClient(server.grpc_target)
    yield c
    c.close()


def test_health_and_metadata_answer_as_rest(server: Server, client: tg.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("demo") and client.is_model_ready("uni", "1")
    rest = httpx.get(f"{server.url}/v2", timeout=10).json()
    assert json_format.MessageToDict(client.get_server_metadata(), preserving_proto_field_name=True) == rest
    for model in ("demo", "uni", "bi"):
        got = json_format.MessageToDict(client.get_model_metadata(model), preserving_proto_field_name=True)
        want = httpx.get(f"{server.url}/v2/models/{model}", timeout=10).json()
        want.pop("parameters")
        for tensor in got["inputs"] + got["outputs"]:
            tensor["shape"] = [int(d) for d in tensor["shape"]]  # int64 is a JSON string in proto3 JSON
        assert got == want


@pytest.mark.parametrize("model", ["demo", "uni", "bi"])
def test_model_config_is_rests_as_a_protobuf(server: Server, client: tg.InferenceServerClient, model: str) -> None:
    got = client.get_model_config(model, as_json=True)["config"]
    want = httpx.get(f"{server.url}/v2/models/{model}/config", timeout=10).json()
    assert got["name"] == want["name"] and got["platform"] == want["platform"]
    assert [(i["name"], [int(d) for d in i["dims"]]) for i in got["input"]] == [(i["name"], i["dims"]) for i in want["input"]]
    assert [o["name"] for o in got["output"]] == [o["name"] for o in want["output"]]
    # one scheduler in Triton's proto: the sequence batcher where the model keeps state
    stateful = "sequence_batching" in want
    assert ("sequence_batching" in got, "dynamic_batching" in got) == (stateful, not stateful)
    assert stateful == (model != "bi")


def test_infer_equals_rest_bit_for_bit_in_both_tensor_forms(server: Server, client: tg.InferenceServerClient,
                                                             reference: Reference) -> None:
    x = np.random.default_rng(3).standard_normal((3, 7, 3)).astype(np.float32)
    lengths = np.array([7, 2, 5], dtype=np.int32)
    got = client.infer("uni", [_input(x), _input(lengths, "sequence_lens", "INT32")], request_id="r1")
    assert got.get_response().id == "r1" and got.get_response().model_version == "1"
    http = th.InferenceServerClient(server.hostport)
    hi = [th.InferInput("input", list(x.shape), "FP32"), th.InferInput("sequence_lens", [3], "INT32")]
    hi[0].set_data_from_numpy(x)
    hi[1].set_data_from_numpy(lengths)
    want = http.infer("uni", hi)
    for name in ("output", "final_h", "final_c"):
        np.testing.assert_allclose(got.as_numpy(name), want.as_numpy(name), atol=1e-6)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(got.as_numpy("output")[i], reference.run("uni", x[i, :n])["output"][0], atol=TOL)
    # typed contents (fp32_contents / int_contents), as other KServe clients send them
    req = pb.ModelInferRequest(model_name="uni", outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="output")])
    req.inputs.add(name="input", datatype="FP32", shape=x.shape).contents.fp32_contents.extend(x.ravel().tolist())
    req.inputs.add(name="sequence_lens", datatype="INT32", shape=[3]).contents.int_contents.extend(lengths.tolist())
    typed, _ = _raw(server.grpc_target, "ModelInfer", req, pb.ModelInferResponse)
    assert [o.name for o in typed.outputs] == ["output"] and list(typed.outputs[0].shape) == [3, 2]
    np.testing.assert_allclose(np.frombuffer(typed.raw_output_contents[0], np.float32).reshape(3, 2),
                               got.as_numpy("output"), atol=1e-6)


def test_64_concurrent_ragged_requests_each_equal_its_sequences_alone(client: tg.InferenceServerClient,
                                                                       reference: Reference) -> None:
    rng = np.random.default_rng(11)
    jobs = []
    for i in range(64):
        model = "uni" if i % 2 else "bi"
        n, t = int(rng.integers(1, 4)), int(rng.integers(1, 40))
        lengths = rng.integers(1, t + 1, size=n).astype(np.int32)
        lengths[0] = t
        jobs.append((model, rng.standard_normal((n, t, 3)).astype(np.float32), lengths))

    def one(job):
        model, x, lengths = job
        return client.infer(model, [_input(x), _input(lengths, "sequence_lens", "INT32")],
                            outputs=[tg.InferRequestedOutput("output")]).as_numpy("output")

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(one, jobs))
    worst = 0.0
    for (model, x, lengths), got in zip(jobs, answers, strict=True):
        for i, n in enumerate(lengths):
            row = got[i] if model == "uni" else got[i, :n]
            worst = max(worst, float(np.abs(row - reference.run(model, x[i, :n])["output"][0]).max()))
    assert worst <= TOL, f"gRPC answers differ from single-sequence answers by {worst}"


def test_statistics_count_both_transports(server: Server, client: tg.InferenceServerClient) -> None:
    def successes() -> int:
        stats = client.get_inference_statistics("bi", "1").model_stats
        assert [(s.name, s.version) for s in stats] == [("bi", "1")]
        return stats[0].inference_stats.success.count

    before = successes()
    x = np.ones((2, 4, 3), np.float32)
    client.infer("bi", [_input(x)])
    assert httpx.post(f"{server.url}/v2/models/bi/infer", timeout=10, json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [2, 4, 3], "data": x.ravel().tolist()}]}).status_code == 200
    assert successes() == before + 2  # one request over each transport
    everything = client.get_inference_statistics().model_stats
    assert {s.name for s in everything} == {"demo", "uni", "bi"}
    rest = httpx.get(f"{server.url}/v2/models/stats", timeout=10).json()["model_stats"]
    assert {(s["name"], s["version"]) for s in rest} == {(s.name, s.version) for s in everything}
    metrics = server.metrics()
    assert 'protocol="grpc"' in metrics and 'model="bi"' in metrics


def test_repository_index_as_rest(server: Server, client: tg.InferenceServerClient) -> None:
    got = json_format.MessageToDict(client.get_model_repository_index(), preserving_proto_field_name=True)["models"]
    want = httpx.post(f"{server.url}/v2/repository/index", timeout=10).json()
    strip = lambda es: sorted((e["name"], e["version"], e["state"]) for e in es)  # noqa: E731
    assert strip(got) == strip(want)
    # model_control_mode=none (the default): load and unload refused as REST's 403
    with pytest.raises(InferenceServerException) as exc:
        client.load_model("demo")
    assert _code(exc.value) == "StatusCode.PERMISSION_DENIED" and "model_control_mode" in exc.value.message()


def test_bad_requests_get_the_status_code_and_message_of_rest(client: tg.InferenceServerClient) -> None:
    x = np.ones((1, 2, 3), np.float32)
    cases = [
        (lambda: client.infer("nope", [_input(x)]), "StatusCode.NOT_FOUND", "unknown model 'nope'"),
        (lambda: client.infer("uni", [_input(x)], model_version="9"), "StatusCode.NOT_FOUND", "no loaded version '9'"),
        (lambda: client.get_model_metadata("nope"), "StatusCode.NOT_FOUND", "unknown model"),
        (lambda: client.infer("uni", [_input(x.astype(np.float64), datatype="FP64")]), "StatusCode.INVALID_ARGUMENT",
         "datatype 'FP64'; the model expects FP32"),
        (lambda: client.infer("uni", [_input(np.ones((1, 2, 5), np.float32))]), "StatusCode.INVALID_ARGUMENT",
         "5 features per step"),
        (lambda: client.infer("uni", [_input(x)], outputs=[tg.InferRequestedOutput("nope")]),
         "StatusCode.INVALID_ARGUMENT", "unknown output 'nope'"),
        (lambda: client.infer("uni", [_input(x)], model_version="01"), "StatusCode.INVALID_ARGUMENT",
         "invalid model version"),
        (lambda: client.get_system_shared_memory_status(), "StatusCode.UNIMPLEMENTED", "system shared memory extension"),
        (lambda: client.get_cuda_shared_memory_status(), "StatusCode.UNIMPLEMENTED", "CUDA shared memory extension"),
        (lambda: client.get_trace_settings(), "StatusCode.UNIMPLEMENTED", "trace extension"),
        (lambda: client.get_log_settings(), "StatusCode.UNIMPLEMENTED", "logging extension"),
    ]
    for call, code, words in cases:
        with pytest.raises(InferenceServerException) as exc:
            call()
        assert (_code(exc.value), words in exc.value.message()) == (code, True), exc.value.message()
    assert client.is_server_ready()  # and it goes on serving
    assert client.infer("uni", [_input(x)]).as_numpy("output").shape == (1, 2)


def test_a_sequence_that_ended_is_failed_precondition(client: tg.InferenceServerClient) -> None:
    x = np.ones((1, 2, 3), np.float32)
    client.infer("uni", [_input(x)], sequence_id=4242, sequence_start=True, sequence_end=True)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("uni", [_input(x)], sequence_id=4242)
    assert _code(exc.value) == "StatusCode.FAILED_PRECONDITION" and "4242" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        client.infer("uni", [_input(x)], sequence_id="never-started")
    assert _code(exc.value) == "StatusCode.NOT_FOUND"


def test_a_passed_deadline_is_deadline_exceeded_and_the_server_goes_on(server: Server, client: tg.InferenceServerClient) -> None:
    x = np.ones((32, 4000, 3), np.float32)  # far more than a millisecond of work on this machine
    with pytest.raises(InferenceServerException) as exc:
        client.infer("bi", [_input(x)], client_timeout=0.001)
    assert _code(exc.value) == "StatusCode.DEADLINE_EXCEEDED"
    assert client.infer("bi", [_input(np.ones((1, 2, 3), np.float32))]).as_numpy("output").shape == (1, 2, 2)


def test_health_service_per_model(server: Server) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        for name in ("", SERVICE, "demo", "uni"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status == serving
        with pytest.raises(grpc.RpcError) as exc:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in exc.value.details()
        watch = health.Watch(health_pb2.HealthCheckRequest(service="demo"), timeout=10)
        assert next(watch).status == serving
        watch.cancel()


def test_reflection_lists_the_services(server: Server) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    names = {s.name for s in answer.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


@pytest.fixture(scope="module")
def strict(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A token, small messages and a short queue."""
    srv = start_server(model_repo, tmp_path_factory.mktemp("strict"), api_key="s3cret", max_request_bytes=65536,
                       max_batch_size=2, max_queue_size=2, max_queue_delay_ms=0)
    yield srv
    srv.stop()


def test_token_required_and_refused_health_open(strict: Server) -> None:
    x = np.ones((1, 2, 3), np.float32)
    for headers, words in ((None, "missing credentials"), ({"authorization": "Bearer wrong"}, "invalid bearer token"),
                           ({"authorization": "Basic s3cret"}, "Bearer scheme")):
        c = tg.InferenceServerClient(strict.grpc_target)
        with pytest.raises(InferenceServerException) as exc:
            c.infer("uni", [_input(x)], headers=headers)
        assert _code(exc.value) == "StatusCode.UNAUTHENTICATED" and words in exc.value.message()
    c = tg.InferenceServerClient(strict.grpc_target)
    assert c.infer("uni", [_input(x)], headers={"authorization": "Bearer s3cret"}).as_numpy("output").shape == (1, 2)
    with grpc.insecure_channel(strict.grpc_target) as channel:  # health stays open, as REST's
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_a_message_over_max_request_bytes_is_resource_exhausted(strict: Server) -> None:
    c = tg.InferenceServerClient(strict.grpc_target)
    with pytest.raises(InferenceServerException) as exc:
        c.infer("uni", [_input(np.ones((1, 8000, 3), np.float32))], headers={"authorization": "Bearer s3cret"})
    assert _code(exc.value) == "StatusCode.RESOURCE_EXHAUSTED" and "65536" in exc.value.message()


def test_overload_is_unavailable_with_retry_after(strict: Server) -> None:
    req = pb.ModelInferRequest(model_name="bi")
    x = np.ones((2, 2000, 3), np.float32)
    req.inputs.add(name="input", datatype="FP32", shape=x.shape)
    req.raw_input_contents.append(x.tobytes())
    auth = (("authorization", "Bearer s3cret"),)

    def one(_: int):
        try:
            _raw(strict.grpc_target, "ModelInfer", req, pb.ModelInferResponse, auth, timeout=60)
            return None
        except grpc.RpcError as exc:
            return exc

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        refused = [e for e in pool.map(one, range(32)) if e is not None]
    assert refused, "32 clients on a queue of 2 were all served"
    for exc in refused:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
        assert dict(exc.trailing_metadata())["retry-after"] == "1"
        assert "queue" in exc.details()


def test_per_worker_engines_serve_grpc_and_refuse_server_kept_state_as_rest(model_repo: Path, reference: Reference,
                                                                            tmp_path: Path) -> None:
    srv = start_server(model_repo, tmp_path, workers=2, engine="per_worker")
    try:
        x = np.random.default_rng(4).standard_normal((2, 5, 3)).astype(np.float32)
        # Ready means one worker serves; on a busy machine the other may bind its gRPC port later.
        deadline = time.monotonic() + 30
        while sum(d.get("msg") == "grpc listening" for d in srv.log_lines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        # New connections spread over both workers (SO_REUSEPORT on the one port). A local
        # subchannel pool per client: grpc's global pool may otherwise reuse one connection.
        for _ in range(16):
            with tg.InferenceServerClient(srv.grpc_target, channel_args=[("grpc.use_local_subchannel_pool", 1)]) as c:
                got = c.infer("uni", [_input(x)]).as_numpy("output")
                np.testing.assert_allclose(got[1], reference.run("uni", x[1])["output"][0], atol=TOL)
        with tg.InferenceServerClient(srv.grpc_target) as c:
            with pytest.raises(InferenceServerException) as exc:
                c.infer("uni", [_input(x[:1])], sequence_id=5, sequence_start=True)
        rest = httpx.post(f"{srv.url}/v2/models/uni/infer", timeout=10, json={
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 5, 3], "data": x[0].ravel().tolist()}],
            "parameters": {"sequence_id": 5, "sequence_start": True}})
        assert _code(exc.value) == "StatusCode.INVALID_ARGUMENT" and rest.status_code == 400
        assert exc.value.message() == rest.json()["error"]
        pids = {d["pid"] for d in srv.log_lines() if d.get("protocol") == "grpc"}
        workers = next(d["workers"] for d in srv.log_lines() if d.get("msg") == "supervising")
        assert pids == set(workers), "both workers serve gRPC on the one port"
    finally:
        assert srv.stop() == 0


def test_metrics_and_access_log_lines_carry_protocol_grpc(server: Server, client: tg.InferenceServerClient) -> None:
    x = np.ones((1, 3, 3), np.float32)
    client.infer("demo", [_input(np.ones((1, 3, 4), np.float32))], headers={"x-request-id": "grpc-log-1"})
    with pytest.raises(InferenceServerException):
        client.infer("uni", [_input(x.astype(np.float64), datatype="FP64")], headers={"x-request-id": "grpc-log-2"})
    metrics = server.metrics()
    assert 'lstm_serve_requests_total{code="200",model="demo",protocol="grpc"}' in metrics
    assert 'lstm_serve_requests_total{code="400",model="uni",protocol="grpc"}' in metrics
    assert 'lstm_serve_request_duration_seconds_count{code="200",model="demo",protocol="grpc"}' in metrics
    deadline = time.monotonic() + 5
    while True:
        lines = {d["request_id"]: d for d in server.log_lines() if d.get("logger") == "lstm_serve.access"}
        if {"grpc-log-1", "grpc-log-2"} <= lines.keys() or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    ok, bad = lines["grpc-log-1"], lines["grpc-log-2"]
    http_line = next(d for d in lines.values() if "protocol" not in d)
    assert set(http_line) <= set(ok)  # the same JSON form as HTTP's, plus protocol and rpc
    assert (ok["code"], ok["model"], ok["protocol"], ok["rpc"], ok["batch_size"]) == (200, "demo", "grpc", "ModelInfer", 1)
    assert bad["code"] == 400 and "datatype 'FP64'" in bad["error"]
