"""The application: app factory, lifespan (start the engine, drain) and the process entries.

``serve`` runs one process (``workers=1``: the engine in-process) or hands over to
``supervisor`` (several HTTP workers, each entering through ``serve_worker``).

Start-up order: the port is bound first (a taken port fails in a second), then the engine
loads every model and warms it up off the event loop (or, in a worker, connects to the engine
process), outside the ASGI lifespan so that a failure raises out of ``serve`` as one line
(``startup``); "ready" is logged once uvicorn listens. Shutdown on SIGTERM: readiness turns
false at once and new inference is refused with 503, while every request already accepted is
answered; uvicorn stops accepting connections, waits for open requests up to the drain
timeout, then the engine drains and the process exits.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from app import __version__
from app.http import auth
from app.http import connections
from app.http import docs
from app.http import extensions
from app import logs
from app import startup
from app.processes import handoff, supervisor
from app.http.compression import ResponseCompression
from app.config import Settings
from app.http.connections import OpenConnections, uvicorn_options
from app.http.direct import DirectHttpProtocol
from app.engine.engine import Engine, LocalEngine
from app.grpc import server as grpc_server
from app.http.errors import install_handlers
from app.http.guard import RequestGuard
from app.http.entry import entry
from app.metrics import Metrics
from app.http.middleware import RequestObserver
from app.processes.remote import RemoteEngine
from app.http.routes import router
from app.engine.runtime import CUDA
from app.http.state import ServerState

log = logging.getLogger("lstm_serve.server")


def create_app(settings: Settings | None = None, engine: Engine | None = None, metrics: Metrics | None = None) -> FastAPI:
    """Build the ASGI app; the engine starts before the app serves (``serve``, or the lifespan
    for in-process use), not here. Without an ``engine``, models are served in this process."""
    settings = settings or Settings()
    token = auth.load_token(settings)  # before loading models: a bad token setting fails fast
    metrics = metrics or Metrics(settings.max_batch_size)
    state = ServerState.create(settings, engine or LocalEngine(settings, metrics), metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start_engine()
        if CUDA in state.engine.providers():
            state.metrics.enable_gpu()
        yield
        state.draining = True
        for stop in state.before_engine_close:  # gRPC calls in flight are answered first
            await stop()
        await state.engine.close(settings.drain_timeout_s)
        log.info("drained; exiting")

    app = FastAPI(
        title="lstm-serve",
        version=__version__,
        description="KServe v2 / Open Inference Protocol server for stacked LSTMs.",
        lifespan=lifespan,
        docs_url=None,  # served offline by `docs`
        redoc_url=None,
    )
    app.state.server = state
    install_handlers(app)
    app.include_router(extensions.router)  # first: /v2/models/stats is not a model's metadata
    app.include_router(router)
    docs.install(app)
    # Starlette makes the last added the outermost: the observer sees every request. A server
    # process enters through `app.http.entry` (see `_run`), which answers inference ahead of
    # this stack with the same guarantees; in-process callers get the routes below.
    app.add_middleware(ResponseCompression, minimum_size=settings.gzip_min_bytes)
    # token, name/version rules and the body deadline, before any endpoint
    app.add_middleware(RequestGuard, body_timeout_s=settings.body_timeout_s, auth=auth.BearerAuth(token) if token else None)
    app.add_middleware(RequestObserver, metrics=state.metrics, access_log=settings.access_log)
    return app


class _Server(uvicorn.Server):
    """uvicorn, plus the engine started before it listens and readiness turning false the
    moment SIGTERM arrives."""

    def __init__(self, config: uvicorn.Config, state: ServerState, channel: socket.socket | None = None) -> None:
        super().__init__(config)
        self._state = state
        self._channel = channel  # a worker's: its connections arrive here (``handoff``)
        self._stop_receiving: Callable[[], None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # Start the engine first, outside the ASGI lifespan, so that a repository or model that
        # cannot be served raises out of `serve` (one line from `startup.run`) instead of being
        # logged as a traceback by uvicorn; "ready" only once uvicorn listens.
        await self._state.start_engine()
        await self._start_grpc()
        await super().startup(sockets)
        if self.started and self._channel is not None:
            config = self.config
            protocol = functools.partial(config.http_protocol_class, config=config,
                                         server_state=self.server_state, app_state=self.lifespan.state)
            self._stop_receiving = handoff.receive(self._channel, protocol)
        if self.started:
            engine = self._state.engine
            log.info(
                "ready",
                extra={
                    "models": {n: sorted(v) for n, v in engine.catalog().items()},
                    "providers": sorted(engine.providers()),
                    "repository": str(self._state.settings.model_repository.resolve()),
                    "listen": f"{self.config.host}:{self.config.port}",
                },
            )

    async def _start_grpc(self) -> None:
        """The gRPC front end beside HTTP, on the same engine; like the engine, started outside
        the ASGI lifespan so that a taken ``grpc_port`` stops the start as one line."""
        state = self._state
        token = auth.load_token(state.settings)
        grpc = await grpc_server.start(state.settings, state.engine, state.metrics, lambda: state.draining, token)
        if grpc is not None:
            state.before_engine_close.append(lambda: grpc.stop(state.settings.drain_timeout_s))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._stop_receiving is not None:  # as uvicorn closes its listeners: no new connections
            self._stop_receiving()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._state.draining = True
        super().handle_exit(sig, frame)

    async def _serve(self, sockets: list[socket.socket] | None = None) -> None:
        await super()._serve(sockets)
        # uvicorn re-raises the captured SIGTERM once shut down, so the process would die of it
        # (exit 143, "Error" in Kubernetes); a completed drain is a clean exit.
        if not self.force_exit:
            getattr(self, "_captured_signals", []).clear()


def _run(app: FastAPI, settings: Settings, sock: socket.socket | None, channel: socket.socket | None = None) -> None:
    """Serve on the listening ``sock`` (one process) or on the connections the supervisor hands
    over ``channel`` (a worker)."""
    state: ServerState = app.state.server
    token = auth.load_token(settings)
    front = entry(app, state, auth.BearerAuth(token) if token else None)  # inference flat, the rest through `app`
    config = uvicorn.Config(
        front,
        host=settings.host,
        port=settings.port,
        loop="auto",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(settings.drain_timeout_s, 0.1),
        server_header=False,
        # connection limits and timeouts (app/http/connections.py); plain inference requests
        # answered by the protocol itself (app/http/direct.py)
        **uvicorn_options(settings, DirectHttpProtocol, entry=front),
    )
    _Server(config, app.state.server, channel).run(sockets=[sock] if sock is not None else [])


def serve(settings: Settings) -> None:
    """Run the server until SIGTERM/SIGINT, then drain: one process, or a supervisor of
    ``settings.workers`` HTTP processes (and the engine process, with ``engine=shared``)."""
    logs.setup(settings.log_level)
    # a taken port fails before models load; with several workers the supervisor accepts on it
    sock = startup.bind(settings.host, settings.port)
    if settings.grpc_port is not None:
        startup.check_free(settings.host, settings.grpc_port, "grpc_port")
    if settings.workers > 1:
        raise SystemExit(supervisor.run(settings, sock, serve_worker))
    _run(create_app(settings), settings, sock)


def serve_worker(settings: Settings, channel: socket.socket, engine_address: str | None, slots: Any, index: int) -> None:
    """One HTTP worker process, serving the connections the supervisor hands it on ``channel``: a client of the engine process
    (``engine=shared``) or its own in-process engine (``per_worker``); ``count`` is its slot in
    the server-wide count of open connections (``slots``, a shared array, at ``index``)."""
    logs.setup(settings.log_level)
    connections.COUNT = OpenConnections(slots, index, on_open=handoff.acknowledge(channel))
    engine = RemoteEngine(engine_address, drain_timeout_s=settings.drain_timeout_s) if engine_address else None
    _run(create_app(settings, engine), settings, None, channel)
