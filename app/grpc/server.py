"""The gRPC server of one process, beside uvicorn: started once the engine serves, stopped
before the engine drains (``app.server`` calls :func:`start` before uvicorn listens, and
:meth:`GrpcServer.stop` once HTTP has drained).

Limits: the largest message either way is ``max_request_bytes`` (RESOURCE_EXHAUSTED past it,
from grpc itself); ``grpc_max_concurrent_streams`` calls at once per client connection. With
several workers each binds the one ``grpc_port`` with SO_REUSEPORT and the kernel spreads
connections over them, as the supervisor's shared socket does for HTTP; one process binds
without it, so a port already taken fails at start.

Draining: a watcher sees the process's draining flag within 50 ms: health turns NOT_SERVING,
new calls are refused UNAVAILABLE (``service``), open streams answer what they read and end
(``streams``); ``stop`` then waits for calls in flight up to ``drain_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from app.config import ENV_PREFIX, Settings
from app.engine.engine import Engine
from app.grpc.auth import TokenCheck
from app.grpc.health import Health
from app.grpc.observe import Observer
from app.grpc.protocol import SERVICE, pb_grpc
from app.grpc.service import InferenceService, Serving
from app.metrics import Metrics
from app.startup import StartupError

log = logging.getLogger("lstm_serve.grpc")
_WATCH_S = 0.05


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    serving: Serving
    watcher: asyncio.Task
    port: int

    async def stop(self, grace_s: float) -> None:
        """Drain: open streams end once answered, calls in flight get up to ``grace_s``."""
        self.serving.drain.set()
        self.watcher.cancel()
        await self.server.stop(grace_s)


def options(settings: Settings) -> list[tuple[str, int]]:
    """The server's channel options: message size, streams per connection, port sharing."""
    return [
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    ]


async def start(settings: Settings, engine: Engine, metrics: Metrics, draining: Callable[[], bool],
                token: bytes | None) -> GrpcServer | None:
    """Serve gRPC on ``settings.grpc_port`` (None: not at all). Fails naming the
    address when the port cannot be bound (StartupError)."""
    if settings.grpc_port is None:
        return None
    serving = Serving(settings, engine, Observer(metrics, settings.access_log), draining, asyncio.Event())
    server = grpc.aio.server(interceptors=[TokenCheck(token)] if token else [], options=options(settings))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(serving), server)
    health_pb2_grpc.add_HealthServicer_to_server(Health(serving), server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection((SERVICE, health_name, reflection.SERVICE_NAME), server)
    address = f"[{settings.host}]:{settings.grpc_port}" if ":" in settings.host else f"{settings.host}:{settings.grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        await server.stop(None)  # nothing started: let grpc release what it holds before exit
        raise StartupError(f"cannot listen for gRPC on {address}: {exc}; stop the process that holds the port "
                           f"or choose another with --grpc-port / {ENV_PREFIX}GRPC_PORT (none: no gRPC)") from None
    await server.start()

    async def watch() -> None:
        while not draining():
            await asyncio.sleep(_WATCH_S)
        serving.drain.set()

    log.info("grpc listening", extra={"listen": address})
    return GrpcServer(server, serving, asyncio.create_task(watch(), name="grpc-drain-watch"), port)
