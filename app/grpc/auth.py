"""The bearer token over gRPC: ``authorization: Bearer <token>`` metadata on every call of
``inference.GRPCInferenceService``; health and reflection stay open (as REST's health paths).
The token and its constant-time check are ``app.v2.auth``'s, shared with REST."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from app.grpc import errors
from app.grpc.protocol import SERVICE
from app.v2.auth import Bearer
from app.v2.errors import Unauthorized, render

_STREAMING = {f"/{SERVICE}/ModelStreamInfer"}


class TokenCheck(grpc.aio.ServerInterceptor):
    """Refuses a call of the inference service without the token, before its handler runs."""

    def __init__(self, token: bytes) -> None:
        self.bearer = Bearer(token)

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        if not details.method.startswith(f"/{SERVICE}/"):
            return await continuation(details)
        value = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        try:
            self.bearer.verify(value.encode("latin-1") if isinstance(value, str) else value)
        except Unauthorized as exc:
            return _refusal(exc, streaming=details.method in _STREAMING)
        return await continuation(details)


def _refusal(exc: Unauthorized, streaming: bool) -> grpc.RpcMethodHandler:
    err = render(exc)

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(errors.code_of(err.status), err.message)

    if streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)
