"""HTTP endpoints of the KServe v2 / Open Inference Protocol, plus /metrics.

Thin on purpose: errors are raised, never built here (``errors`` maps them); inference itself
lives in ``inference`` (decode -> batcher -> encode), served ahead of this router, and model
lifecycle in the engine (``engine`` -> ``lifecycle``), whatever process it runs in.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import PlainTextResponse, Response

from app.http import inference
from app.http import codec
from app.v2 import request as v2_request
from app.http import schema
from app.engine import metadata
from app.engine.catalog import versions_of
from app.v2.errors import InvalidInput
from app.http.state import ServerState

router = APIRouter()

LIVE = "/v2/health/live"
READY = "/v2/health/ready"
METRICS = "/metrics"
JSON = "application/json"


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _json(doc: object, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON)


@router.get(LIVE, tags=["health"], response_model=schema.Live)
@router.head(LIVE, tags=["health"], response_model=schema.Live)
async def live() -> Response:
    """The process is up (never touches a model: a liveness probe must stay cheap)."""
    return _json({"live": True})


@router.get(READY, tags=["health"], response_model=schema.Ready, responses={503: {"model": schema.Ready, "description": "Loading, warming up or draining."}})
@router.head(READY, tags=["health"], response_model=schema.Ready, responses={503: {"description": "Loading, warming up or draining."}})
async def ready(request: Request) -> Response:
    """Every model is loaded and warmed up, and the server is not draining."""
    ok = _state(request).ready
    return _json({"ready": ok}, 200 if ok else 503)


@router.get("/v2", tags=["server"], response_model=schema.ServerMetadata)
async def server_metadata() -> Response:
    return _json(metadata.server_metadata())


_META = {"tags": ["model"], "response_model": schema.ModelMetadata, "responses": schema.responses(404, 503)}


# The unversioned paths have functions of their own so that the OpenAPI document does not list
# a `version` query parameter the server would ignore.
@router.get("/v2/models/{name}", **_META)
async def model_metadata_latest(request: Request, name: str) -> Response:
    """Inputs, outputs, datatypes and shapes (-1 for dynamic axes) of the latest loaded version."""
    return await model_metadata(request, name)


@router.get("/v2/models/{name}/versions/{version}", **_META)
async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    """Inputs, outputs, datatypes and shapes (-1 for dynamic axes), read from the artifact."""
    state = _state(request)
    model = state.engine.model(name, version)
    return _json(metadata.model_metadata(model, sorted(state.engine.catalog()[name]), state.settings))


_MODEL_READY = {"tags": ["health"], "response_model": schema.ModelReady, "responses": {
    404: {"model": schema.Error, "description": "Unknown model or version."},
    503: {"model": schema.ModelReady, "description": "Not loaded yet, or the server is draining."},
}}


@router.get("/v2/models/{name}/ready", **_MODEL_READY)
@router.head("/v2/models/{name}/ready", **_MODEL_READY)
async def model_ready_latest(request: Request, name: str) -> Response:
    return await model_ready(request, name)


@router.get("/v2/models/{name}/versions/{version}/ready", **_MODEL_READY)
@router.head("/v2/models/{name}/versions/{version}/ready", **_MODEL_READY)
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    state = _state(request)
    model = state.engine.model(name, version)
    ok = model.ready and not state.draining
    return _json({"name": name, "ready": ok}, 200 if ok else 503)


_INFER = {"tags": ["inference"], "response_model": schema.InferenceResponse, "responses": schema.ERRORS,
          "openapi_extra": schema.INFER_OPENAPI, "summary": "Infer", "description": schema.INFER_DESCRIPTION}


@router.post("/v2/models/{name}/infer", **_INFER)
async def infer_latest(request: Request, name: str) -> Response:
    """The latest loaded version (see :func:`infer`)."""
    return await infer(request, name)


@router.post("/v2/models/{name}/versions/{version}/infer", **_INFER)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Run sequences through the model; JSON or binary tensors in, the same way out.

    Body: a KServe v2 inference request. Input ``input`` FP32 [n, time, features] (n sequences
    of one length), optional ``sequence_lens`` INT32 [n] for right-padded rows, optional
    ``initial_h``/``initial_c`` (unidirectional models) to continue from a carried state.
    Served by ``entry.InferenceEntry`` ahead of FastAPI in a server process; this route documents the
    endpoint and answers in-process callers with the same code.
    """
    headers = {k: v for k, v in request.headers.items() if k in inference.REQUEST_HEADERS}
    body, out = await inference.infer(
        _state(request), name, version, inference.receiving(request.receive), headers, request.scope.setdefault("state", {})
    )
    response = Response(body)
    response.raw_headers = [*out, (b"content-length", str(len(body)).encode())]
    return response


async def _options(request: Request, allowed: set[str]) -> dict:
    """The optional JSON body of a repository call (tritonclient sends none, ``{}`` or
    ``{"parameters": {...}}``); parameters this server cannot honour are refused by name."""
    raw = await request.body()
    if not raw.strip():
        return {}
    doc = codec.json_object(raw)
    params = v2_request.parameters(doc.get("parameters"), "request")
    unknown = sorted(k for k in params if k not in allowed)
    if unknown:
        raise InvalidInput(f"unsupported parameter(s) {unknown}: models load from the repository as they are "
                           "(put per-model settings in <repository>/<model>/settings.json)")
    return doc


@router.post("/v2/repository/index", tags=["repository"], responses=schema.responses(400))
async def repository_index(request: Request) -> Response:
    """Every version in the repository, loaded or not: ``[{"name", "version", "state",
    "reason"}]`` (states LOADING, READY, UNLOADING, UNAVAILABLE); ``{"ready": true}`` lists the
    READY ones only."""
    doc = await _options(request, set())
    entries = await _state(request).engine.index()
    if doc.get("ready") is True:
        entries = [e for e in entries if e["state"] == "READY"]
    return _json(entries)


@router.post("/v2/repository/models/{name}/load", tags=["repository"], responses=schema.responses(400, 403, 404))
async def load_model(request: Request, name: str) -> Response:
    """Re-read ``<repository>/<name>/`` and serve what its version policy selects; 200 ``{}``
    once it serves. A version that cannot be served refuses the whole load (400) and what
    served keeps serving. 403 with ``model_control_mode=none``."""
    await _options(request, set())
    await _state(request).engine.load(name)
    return _json({})


@router.post("/v2/repository/models/{name}/unload", tags=["repository"], responses=schema.responses(400, 403, 404))
async def unload_model(request: Request, name: str) -> Response:
    """Stop serving every version of ``name``; 200 ``{}`` once its queues drained."""
    await _options(request, {"unload_dependents"})
    await _state(request).engine.unload(name)
    return _json({})


@router.get(METRICS, tags=["metrics"], response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    state = _state(request)
    served = {(n, str(v)) for n, v in versions_of(state.engine.catalog())}
    return Response(state.metrics.exposition(served), media_type=CONTENT_TYPE_LATEST)
