"""Triton's protocol extensions: model configuration and statistics, and clear refusals of the
rest.

Served here: model configuration (``/config``, see ``model_config``) and statistics (``/stats``,
see ``stats``); the model repository extension is in ``routes`` (``lifecycle``). Every other
extension that Triton's clients call (trace and log settings, system and CUDA shared memory,
generate) answers 501 with a message that names the extension, so ``tritonclient`` raises an error that says why instead of a bare
"Not Found". This router is included ahead of ``routes``: ``/v2/models/stats`` must not be
read as the metadata of a model named "stats".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.http import schema
from app.v2.errors import NotSupported
from app.engine.model_config import triton_config
from app.http.routes import _json, _state

router = APIRouter()

# Extensions named in GET /v2 "extensions" (besides binary_tensor_data).
SERVED = ("model_configuration", "statistics", "model_repository")


@router.get("/v2/models/stats", tags=["statistics"], response_model=schema.Statistics)
async def all_stats(request: Request) -> Response:
    """Triton's statistics of every loaded model version."""
    engine = _state(request).engine
    models = [info for _, versions in sorted(engine.catalog().items()) for _, info in sorted(versions.items())]
    return _json({"model_stats": await engine.stats(models)})


@router.get("/v2/models/{name}/stats", tags=["statistics"], response_model=schema.Statistics,
            responses=schema.responses(404, 503))
async def model_stats_latest(request: Request, name: str) -> Response:
    """Triton's statistics of every loaded version of model ``name``."""
    engine = _state(request).engine
    engine.model(name)  # 404 naming the model if unknown
    versions = engine.catalog()[name]
    return _json({"model_stats": await engine.stats([versions[v] for v in sorted(versions)])})


@router.get("/v2/models/{name}/versions/{version}/stats", tags=["statistics"], response_model=schema.Statistics,
            responses=schema.responses(404, 503))
async def model_stats(request: Request, name: str, version: str) -> Response:
    """Triton's statistics of one model version: counts and cumulative nanoseconds."""
    engine = _state(request).engine
    return _json({"model_stats": await engine.stats([engine.model(name, version)])})


async def _config(request: Request, name: str, version: str | None) -> Response:
    state = _state(request)
    model = state.engine.model(name, version)
    versions = sorted(state.engine.catalog()[name])
    return _json(triton_config(model.name, model.spec, state.settings, model.provider, versions))


@router.get("/v2/models/{name}/config", tags=["model"], responses=schema.responses(404, 503))
async def model_config_latest(request: Request, name: str) -> Response:
    """The model as Triton's ModelConfig JSON (what perf_analyzer and ``get_model_config`` read)."""
    return await _config(request, name, None)


@router.get("/v2/models/{name}/versions/{version}/config", tags=["model"], responses=schema.responses(404, 503))
async def model_config(request: Request, name: str, version: str) -> Response:
    """The model version as Triton's ModelConfig JSON."""
    return await _config(request, name, version)


# path -> (methods, extension name as Triton's documentation spells it)
UNSUPPORTED: dict[str, tuple[tuple[str, ...], str]] = {
    "/v2/trace/setting": (("GET", "POST"), "trace"),
    "/v2/models/{name}/trace/setting": (("GET", "POST"), "trace"),
    "/v2/logging": (("GET", "POST"), "logging"),
    "/v2/systemsharedmemory/{rest:path}": (("GET", "POST"), "system shared memory"),
    "/v2/cudasharedmemory/{rest:path}": (("GET", "POST"), "CUDA shared memory"),
    "/v2/models/{name}/generate": (("POST",), "generate"),
    "/v2/models/{name}/versions/{version}/generate": (("POST",), "generate"),
    "/v2/models/{name}/generate_stream": (("POST",), "generate"),
    "/v2/models/{name}/versions/{version}/generate_stream": (("POST",), "generate"),
}


def _refuse(extension: str) -> Callable[[], Awaitable[Response]]:
    async def refuse() -> Response:
        raise NotSupported(
            f"the {extension} extension is not supported by lstm-serve; it serves the KServe v2 "
            f"protocol with the extensions {['binary_tensor_data', *SERVED]} (GET /v2)"
        )

    return refuse


for _path, (_methods, _extension) in UNSUPPORTED.items():
    for _method in _methods:
        router.add_api_route(
            _path,
            _refuse(_extension),
            methods=[_method],
            tags=["unsupported extensions"],
            summary=f"{_extension} (not supported: 501)",
            operation_id=f"unsupported_{_method.lower()}_{_path.strip('/').replace('/', '_').replace('{', '').replace('}', '').replace(':', '_')}",
            status_code=501,
            responses=schema.responses(501),
            response_class=Response,
            include_in_schema=True,
        )
