"""``grpc.health.v1.Health``: what the Kubernetes gRPC probe and service meshes ask.

The service ``""`` (and ``inference.GRPCInferenceService``) is the server: SERVING only when
REST readiness is true, so NOT_SERVING while loading or draining. Any other service name is a
model name: SERVING when that model's default version is ready. An unknown name is NOT_FOUND
(Triton answers SERVING for any name, which hides a typo in a probe). Open without a token, as
REST's health paths.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.grpc.protocol import SERVICE
from app.grpc.service import Serving
from app.v2.errors import ModelNotFound, ModelNotReady

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
WATCH_INTERVAL_S = 1.0


class Health(health_pb2_grpc.HealthServicer):
    def __init__(self, serving: Serving) -> None:
        self.serving = serving

    def status(self, service: str) -> int:
        """SERVING or NOT_SERVING; raises ModelNotFound for a name that is no model."""
        if service in ("", SERVICE):
            return SERVING if self.serving.ready else NOT_SERVING
        try:
            model = self.serving.engine.model(service)
        except ModelNotReady:
            return NOT_SERVING
        return SERVING if model.ready and self.serving.ready else NOT_SERVING

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return health_pb2.HealthCheckResponse(status=self.status(request.service))
        except ModelNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, exc.message)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """The status now, then each change (checked once a second)."""
        seen = None
        while True:
            try:
                status = self.status(request.service)
            except ModelNotFound:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != seen:
                seen = status
                yield health_pb2.HealthCheckResponse(status=status)
            await asyncio.sleep(WATCH_INTERVAL_S)
