"""The application: app factory, lifespan (start the engine, drain) and the process entries.

``serve`` runs one process (``workers=1``: the engine in-process) or hands over to
``supervisor`` (several HTTP workers, each entering through ``serve_worker``).

Start-up order: the engine loads every model and warms it up off the event loop (or, in a
worker, connects to the engine process), and only then is the server ready. Shutdown on SIGTERM: readiness turns false at once and new inference is refused with
503, while every request already accepted is answered; uvicorn stops accepting connections,
waits for open requests up to the drain timeout, then the batchers drain and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType

import uvicorn
from fastapi import FastAPI

from . import __version__, logs, supervisor
from .config import Settings
from .engine import Engine, LocalEngine
from .errors import install_handlers
from .inference import InferenceFastPath
from .metrics import Metrics
from .middleware import RequestObserver
from .remote import RemoteEngine
from .routes import router
from .runtime import CUDA
from .state import ServerState

log = logging.getLogger("lstm_serve.server")


def create_app(settings: Settings | None = None, engine: Engine | None = None, metrics: Metrics | None = None) -> FastAPI:
    """Build the ASGI app; the engine starts when the app starts (lifespan), not here.
    Without an ``engine``, models are served in this process."""
    settings = settings or Settings()
    metrics = metrics or Metrics(settings.max_batch_size)
    state = ServerState.create(settings, engine or LocalEngine(settings, metrics), metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.engine.start()
        if CUDA in state.engine.providers():
            state.metrics.enable_gpu()
        log.info(
            "ready",
            extra={
                "models": {n: sorted(v) for n, v in state.engine.catalog().items()},
                "providers": sorted(state.engine.providers()),
                "repository": str(settings.model_repository.resolve()),
            },
        )
        yield
        state.draining = True
        await state.engine.close(settings.drain_timeout_s)
        log.info("drained; exiting")

    app = FastAPI(
        title="lstm-serve",
        version=__version__,
        description="KServe v2 / Open Inference Protocol server for stacked LSTMs.",
        lifespan=lifespan,
    )
    app.state.server = state
    install_handlers(app)
    app.include_router(router)
    # Starlette makes the last added the outermost: the observer sees every request, the fast
    # path answers inference requests before FastAPI's router.
    app.add_middleware(InferenceFastPath, state=state)
    app.add_middleware(RequestObserver, metrics=state.metrics, access_log=settings.access_log)
    return app


class _Server(uvicorn.Server):
    """uvicorn, plus readiness turning false the moment SIGTERM arrives."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._state.draining = True
        super().handle_exit(sig, frame)

    async def _serve(self, sockets: list[socket.socket] | None = None) -> None:
        await super()._serve(sockets)
        # uvicorn re-raises the captured SIGTERM once shut down, so the process would die of it
        # (exit 143, "Error" in Kubernetes); a completed drain is a clean exit.
        if not self.force_exit:
            getattr(self, "_captured_signals", []).clear()


def _run(app: FastAPI, settings: Settings, sockets: list[socket.socket] | None = None) -> None:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="auto",
        http="auto",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(settings.drain_timeout_s, 0.1),
        server_header=False,
    )
    _Server(config, app.state.server).run(sockets=sockets)


def serve(settings: Settings) -> None:
    """Run the server until SIGTERM/SIGINT, then drain: one process, or a supervisor of
    ``settings.workers`` HTTP processes (and the engine process, with ``engine=shared``)."""
    logs.setup(settings.log_level)
    if settings.workers > 1:
        raise SystemExit(supervisor.run(settings))
    _run(create_app(settings), settings)


def serve_worker(settings: Settings, sock: socket.socket, engine_address: str | None) -> None:
    """One HTTP worker process on the supervisor's socket: a client of the engine process
    (``engine=shared``) or its own in-process engine (``per_worker``)."""
    logs.setup(settings.log_level)
    engine = RemoteEngine(engine_address, drain_timeout_s=settings.drain_timeout_s) if engine_address else None
    _run(create_app(settings, engine), settings, [sock])
