"""HTTP endpoints of the KServe v2 / Open Inference Protocol, plus /metrics.

Thin on purpose: decode (``protocol``) -> queue (``batcher`` via ``model``) -> encode. Errors
are raised, never built here (``errors`` maps them). On the inference path the order of checks
is what keeps overload cheap: a request is refused before its body is decoded, but only after
it is read (answering before reading resets the client's connection).
"""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from . import __version__, protocol, schema
from .errors import PayloadTooLarge, RequestTimeout, ShuttingDown
from .model import ServedModel
from .state import ServerState

router = APIRouter()

LIVE = "/v2/health/live"
READY = "/v2/health/ready"
METRICS = "/metrics"
JSON = "application/json"


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _json(doc: object, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON)


@router.get(LIVE, tags=["health"])
async def live() -> Response:
    """The process is up (never touches a model: a liveness probe must stay cheap)."""
    return _json({"live": True})


@router.get(READY, tags=["health"])
async def ready(request: Request) -> Response:
    """Every model is loaded and warmed up, and the server is not draining."""
    ok = _state(request).ready
    return _json({"ready": ok}, 200 if ok else 503)


@router.get("/v2", tags=["server"])
async def server_metadata() -> Response:
    return _json({"name": "lstm-serve", "version": __version__, "extensions": ["binary_tensor_data"]})


def _metadata(model: ServedModel, versions: list[int]) -> dict:
    spec = model.spec
    ins = spec.input_shapes()
    outs = spec.output_shapes()
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": n, "datatype": protocol.EXPECTED_DATATYPE[n], "shape": ins[n]} for n in spec.input_names
        ],
        "outputs": [{"name": n, "datatype": "FP32", "shape": outs[n]} for n in spec.output_names],
        "parameters": {
            **spec.describe(),
            "version": str(model.version),
            "provider": model.provider,
            "required_inputs": ["input"],
            "optional_inputs": [n for n in spec.input_names if n != "input"],
        },
    }


@router.get("/v2/models/{name}", tags=["model"], response_model=schema.ModelMetadata, responses=schema.ERRORS)
@router.get(
    "/v2/models/{name}/versions/{version}", tags=["model"], response_model=schema.ModelMetadata, responses=schema.ERRORS
)
async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    """Inputs, outputs, datatypes and shapes (-1 for dynamic axes), read from the artifact."""
    repo = _state(request).repository
    model = repo.get(name, version)
    return _json(_metadata(model, sorted(repo.models[name])))


@router.get("/v2/models/{name}/ready", tags=["health"])
@router.get("/v2/models/{name}/versions/{version}/ready", tags=["health"])
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    state = _state(request)
    model = state.repository.get(name, version)
    ok = model.ready and not state.draining
    return _json({"name": name, "ready": ok}, 200 if ok else 503)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_INFER = {"tags": ["inference"], "response_model": schema.InferenceResponse, "responses": schema.ERRORS,
          "openapi_extra": schema.INFER_OPENAPI}


@router.post("/v2/models/{name}/infer", **_INFER)
@router.post("/v2/models/{name}/versions/{version}/infer", **_INFER)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Run sequences through the model; JSON or binary tensors in, the same way out.

    Body: a KServe v2 inference request. Input ``input`` FP32 [n, time, features] (n sequences
    of one length), optional ``sequence_lens`` INT32 [n] for right-padded rows, optional
    ``initial_h``/``initial_c`` (unidirectional models) to continue from a carried state.
    """
    state = _state(request)
    if state.draining:
        raise ShuttingDown("server is shutting down; retry on another replica")
    model = state.repository.get(name, version)
    request.state.model = model.name
    request.state.version = model.version
    body = await _read_body(request, state.settings.max_request_bytes)
    model.batcher.check_room()
    req = protocol.decode_request(body, request.headers.get(protocol.HEADER_LENGTH), model.spec, state.limits)
    try:
        done = await asyncio.wait_for(model.infer(req.sequences, req.outputs), state.settings.request_timeout_s)
    except TimeoutError:
        raise RequestTimeout(
            f"request was not answered within request_timeout_s={state.settings.request_timeout_s}"
        ) from None
    queue_ms, inference_ms = done.queue_s * 1000, done.inference_s * 1000
    request.state.batch_size = done.batch_size
    request.state.queue_ms = round(queue_ms, 3)
    request.state.inference_ms = round(inference_ms, 3)
    payload, header_length = protocol.encode_response(
        model.name, str(model.version), req.id, done.result, req.binary_outputs
    )
    headers = {
        "Server-Timing": f"queue;dur={queue_ms:.3f}, inference;dur={inference_ms:.3f}",
        "X-Batch-Size": str(done.batch_size),
    }
    media = JSON
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
        media = "application/octet-stream"
    return Response(payload, headers=headers, media_type=media)


@router.get(METRICS, tags=["metrics"])
async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
