"""``inference.GRPCInferenceService``: every RPC answers what its REST twin answers, from the
same engine, catalog, lifecycle and statistics calls (``app.http.routes`` / ``extensions``).

Errors are raised as the protocol's classes (``app.v2.errors``) and turned into a gRPC status
once (:func:`_unary`, ``app.grpc.errors``). Inference (:meth:`InferenceService.infer`) is the
same sequence of engine calls as REST's: the version is held until answered, admission is
checked before the tensors are decoded, and the wait is bounded by ``request_timeout_s`` and the
client's deadline; a call the client gave up on is taken off the queue (``Engine.submit``).
Shared memory, trace and logging answer UNIMPLEMENTED naming the extension, as REST's 501.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format

from app.config import Settings
from app.contract import ContractError
from app.engine import metadata
from app.engine.engine import Engine
from app.engine.model_config import triton_config
from app.grpc import codec, errors
from app.grpc.observe import Call, Observer, request_id
from app.grpc.streams import serve_stream
from app.grpc.protocol import config_pb, pb, pb_grpc
from app.observe import milliseconds
from app.v2 import names
from app.v2.errors import InvalidInput, ModelNotReady, NotSupported, ServingError, ShuttingDown, render
from app.v2.request import Limits
from app.v2.sequences import Job


@dataclass
class Serving:
    """What the gRPC front end of one process serves from: the settings, the engine and metrics
    it shares with REST, and whether the process drains (SIGTERM)."""

    settings: Settings
    engine: Engine
    observer: Observer
    draining: Callable[[], bool]
    drain: asyncio.Event  # set once draining is seen (``server``): open streams end


    @property
    def ready(self) -> bool:
        """HTTP readiness: models loaded and warm, not draining."""
        return self.engine.ready and not self.draining()


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    err = render(exc)
    await context.abort(errors.code_of(err.status), err.message, errors.trailers(err))


def _unary(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A unary RPC whose protocol errors become its gRPC status."""

    @functools.wraps(method)
    async def rpc(self: InferenceService, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except (ServingError, ContractError) as exc:
            await _abort(context, exc)

    return rpc


def _version(raw: str) -> str | None:
    """A request's ``model_version`` ("" is the default version), checked by the one rule."""
    if not raw:
        return None
    names.check_version(raw)
    return raw


UNSUPPORTED = {
    "SystemSharedMemoryStatus": "system shared memory", "SystemSharedMemoryRegister": "system shared memory",
    "SystemSharedMemoryUnregister": "system shared memory", "CudaSharedMemoryStatus": "CUDA shared memory",
    "CudaSharedMemoryRegister": "CUDA shared memory", "CudaSharedMemoryUnregister": "CUDA shared memory",
    "TraceSetting": "trace", "LogSettings": "logging",
}


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self.engine = serving.engine
        self.settings = serving.settings

    # -- health and metadata ------------------------------------------------------------------
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.serving.ready)

    @_unary
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            model = self.engine.model(names.check_name(request.name), _version(request.version))
        except ModelNotReady:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=model.ready and not self.serving.draining())

    @_unary
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return json_format.ParseDict(metadata.server_metadata(), pb.ServerMetadataResponse())

    @_unary
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = self.engine.model(names.check_name(request.name), _version(request.version))
        doc = metadata.model_metadata(model, sorted(self.engine.catalog()[model.name]), self.settings)
        doc.pop("parameters")  # REST-only: the protobuf message has no such field
        return json_format.ParseDict(doc, pb.ModelMetadataResponse())

    @_unary
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = self.engine.model(names.check_name(request.name), _version(request.version))
        versions = sorted(self.engine.catalog()[model.name])
        doc = triton_config(model.name, model.spec, self.settings, model.provider, versions)
        return pb.ModelConfigResponse(config=json_format.ParseDict(doc, config_pb.ModelConfig()))

    @_unary
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        engine = self.engine
        if not request.name:
            models = [info for _, versions in sorted(engine.catalog().items()) for _, info in sorted(versions.items())]
        elif request.version:
            models = [engine.model(names.check_name(request.name), _version(request.version))]
        else:
            engine.model(names.check_name(request.name))  # NOT_FOUND naming the model if unknown
            versions = engine.catalog()[request.name]
            models = [versions[v] for v in sorted(versions)]
        return json_format.ParseDict({"model_stats": await engine.stats(models)}, pb.ModelStatisticsResponse())

    # -- model repository -----------------------------------------------------------------------
    @_unary
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        entries = await self.engine.index()
        if request.ready:
            entries = [e for e in entries if e["state"] == "READY"]
        return json_format.ParseDict({"models": entries}, pb.RepositoryIndexResponse())

    @_unary
    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _refuse_parameters(request.parameters, set())
        await self.engine.load(names.check_name(request.model_name))
        return pb.RepositoryModelLoadResponse()

    @_unary
    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _refuse_parameters(request.parameters, {"unload_dependents"})
        await self.engine.unload(names.check_name(request.model_name))
        return pb.RepositoryModelUnloadResponse()

    # -- inference ------------------------------------------------------------------------------
    async def infer(self, msg: Any, call: Call, deadline_s: float | None) -> Any:
        """One inference request: the engine's answer as a ``ModelInferResponse``. Raises
        ServingError (or ContractError) for every refusal."""
        if self.serving.draining():
            raise ShuttingDown("server is shutting down; retry on another replica")
        engine = self.engine
        model = engine.model(names.check_name(msg.model_name), _version(msg.model_version))
        call.info["model"] = model.name
        call.info["version"] = model.version
        engine.hold(model)
        try:
            engine.admit(model)
            limits = Limits(model.max_batch_size, self.settings.max_sequence_length)
            req = codec.decode_request(msg, model.spec, limits)
            timeout = self.settings.request_timeout_s
            if deadline_s is not None and deadline_s < timeout:
                timeout, why = max(deadline_s, 0.0), "the client's deadline"
            else:
                why = f"request_timeout_s={timeout}"
            job = Job(model.name, model.version, req.sequences, req.outputs, req.stream)
            done = await engine.submit_within(job, timeout, why)
        finally:
            engine.release(model)
        call.info["batch_size"] = done.batch_size
        call.info["queue_ms"] = milliseconds(done.queue_s)
        call.info["inference_ms"] = milliseconds(done.inference_s)
        return codec.encode_response(model.name, str(model.version), req.id, done.result)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = Call(request_id(context.invocation_metadata()), "ModelInfer")
        observer = self.serving.observer
        observer.metrics.inflight_add(1)
        code = 200
        try:
            return await self.infer(request, call, context.time_remaining())
        except (ServingError, ContractError) as exc:
            err = render(exc)
            code, call.info["error"] = err.status, err.message
            await context.abort(errors.code_of(err.status), err.message, errors.trailers(err))
        except asyncio.CancelledError:  # the client cancelled or its deadline passed
            code, call.info["error"] = 504 if (context.time_remaining() or 1) <= 0 else errors.CLIENT_GONE, "client gone"
            raise
        finally:
            observer.metrics.inflight_add(-1)
            observer.done(call, code)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in serve_stream(request_iterator, context, self.answer, self.serving.drain):
            yield response

    async def answer(self, msg: Any, rpc: str) -> Any:
        """One request of a stream: its ``ModelStreamInferResponse``, an error as ``error_message``."""
        call = Call(request_id(()), rpc)
        observer = self.serving.observer
        code = 200
        try:
            response = await self.infer(msg, call, None)
            return pb.ModelStreamInferResponse(infer_response=response)
        except (ServingError, ContractError) as exc:
            err = render(exc)
            code, call.info["error"] = err.status, err.message
            echo = pb.ModelInferResponse(model_name=msg.model_name, model_version=msg.model_version, id=msg.id)
            return pb.ModelStreamInferResponse(error_message=err.message, infer_response=echo)
        except asyncio.CancelledError:
            code, call.info["error"] = errors.CLIENT_GONE, "stream closed before the answer"
            raise
        finally:
            observer.done(call, code)


def _refuse_parameters(params: Any, allowed: set[str]) -> None:
    """Repository parameters this server cannot honour are refused by name (as REST does)."""
    unknown = sorted(k for k in params if k not in allowed)
    if unknown:
        raise InvalidInput(f"unsupported parameter(s) {unknown}: models load from the repository as they are "
                           "(put per-model settings in <repository>/<model>/settings.json)")


def _unsupported(extension: str) -> Callable[..., Awaitable[Any]]:
    async def refuse(self: InferenceService, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _abort(context, NotSupported(
            f"the {extension} extension is not supported by lstm-serve; it serves the KServe v2 protocol with "
            f"the extensions {metadata.EXTENSIONS} (ServerMetadata)"))

    return refuse


for _rpc, _extension in UNSUPPORTED.items():
    setattr(InferenceService, _rpc, _unsupported(_extension))
