"""HTTP endpoints of the KServe v2 / Open Inference Protocol, plus /metrics.

Thin on purpose: errors are raised, never built here (``errors`` maps them); inference itself
lives in ``inference`` (decode -> batcher -> encode), served ahead of this router.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from . import __version__, inference, protocol, schema
from .catalog import ModelInfo
from .config import Settings
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


def _metadata(model: ModelInfo, versions: list[int], settings: Settings) -> dict:
    spec = model.spec
    ins = spec.input_shapes()
    outs = spec.output_shapes()
    doc = {
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
    if spec.stateful:  # server-kept streaming (README "Streaming"), Triton's parameter names
        doc["parameters"]["sequence_batching"] = {
            "parameters": ["sequence_id", "sequence_start", "sequence_end"],
            "sequence_idle_timeout_s": settings.sequence_idle_timeout_s,
            "max_live_sequences": settings.max_live_sequences,
        }
    return doc


@router.get("/v2/models/{name}", tags=["model"], response_model=schema.ModelMetadata, responses=schema.ERRORS)
@router.get(
    "/v2/models/{name}/versions/{version}", tags=["model"], response_model=schema.ModelMetadata, responses=schema.ERRORS
)
async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    """Inputs, outputs, datatypes and shapes (-1 for dynamic axes), read from the artifact."""
    state = _state(request)
    model = state.engine.model(name, version)
    return _json(_metadata(model, sorted(state.engine.catalog()[name]), state.settings))


@router.get("/v2/models/{name}/ready", tags=["health"])
@router.get("/v2/models/{name}/versions/{version}/ready", tags=["health"])
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    state = _state(request)
    model = state.engine.model(name, version)
    ok = model.ready and not state.draining
    return _json({"name": name, "ready": ok}, 200 if ok else 503)


_INFER = {"tags": ["inference"], "response_model": schema.InferenceResponse, "responses": schema.ERRORS,
          "openapi_extra": schema.INFER_OPENAPI}


@router.post("/v2/models/{name}/infer", **_INFER)
@router.post("/v2/models/{name}/versions/{version}/infer", **_INFER)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Run sequences through the model; JSON or binary tensors in, the same way out.

    Body: a KServe v2 inference request. Input ``input`` FP32 [n, time, features] (n sequences
    of one length), optional ``sequence_lens`` INT32 [n] for right-padded rows, optional
    ``initial_h``/``initial_c`` (unidirectional models) to continue from a carried state.
    Served by ``inference.InferenceFastPath`` ahead of this router; this route documents the
    endpoint and answers in-process callers with the same code.
    """
    headers = {k: v for k, v in request.headers.items() if k in ("content-length", protocol.HEADER_LENGTH)}
    body, out = await inference.infer(
        _state(request), name, version, request.receive, headers, request.scope.setdefault("state", {})
    )
    response = Response(body)
    response.raw_headers = [*out, (b"content-length", str(len(body)).encode())]
    return response


@router.get(METRICS, tags=["metrics"])
async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
