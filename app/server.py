"""The application: app factory, lifespan (load, warm up, drain) and the process entry.

Start-up order: load every model and warm it up off the event loop, and only then report
ready. Shutdown on SIGTERM: readiness turns false at once and new inference is refused with
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
from starlette.middleware.gzip import GZipMiddleware

from . import __version__, docs, extensions, logs, startup
from .config import Settings
from .errors import install_handlers
from .inference import InferenceFastPath
from .middleware import RequestObserver
from .routes import router
from .runtime import CUDA
from .state import ServerState

log = logging.getLogger("lstm_serve.server")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app; models load when it starts (lifespan), not here."""
    settings = settings or Settings()
    state = ServerState.create(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not state.repository.models:  # `serve` loads before the lifespan, to fail cleanly
            await asyncio.to_thread(state.repository.load)
        if any(m.provider == CUDA for m in state.repository.all()):
            state.metrics.enable_gpu()
        yield
        state.draining = True
        await state.repository.drain(settings.drain_timeout_s)
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
    # Starlette makes the last added the outermost: the observer sees every request, the fast
    # path answers inference requests before FastAPI's router, gzip compresses either's answer.
    app.add_middleware(InferenceFastPath, state=state)
    app.add_middleware(GZipMiddleware, minimum_size=settings.gzip_min_bytes)
    app.add_middleware(RequestObserver, metrics=state.metrics, access_log=settings.access_log)
    return app


class _Server(uvicorn.Server):
    """uvicorn, plus readiness turning false the moment SIGTERM arrives."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._state = state

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # Load first, outside the ASGI lifespan, so that a repository or model that cannot be
        # served raises out of `serve` (one line from `startup.run`) instead of being logged
        # as a traceback by uvicorn; "ready" only once uvicorn listens.
        await asyncio.to_thread(self._state.repository.load)
        await super().startup(sockets)
        if self.started:
            repo = self._state.repository
            log.info(
                "ready",
                extra={
                    "models": {n: sorted(v) for n, v in repo.models.items()},
                    "providers": sorted({m.provider for m in repo.all()}),
                    "repository": str(repo.root),
                    "listen": f"{self.config.host}:{self.config.port}",
                },
            )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._state.draining = True
        super().handle_exit(sig, frame)

    async def _serve(self, sockets: list[socket.socket] | None = None) -> None:
        await super()._serve(sockets)
        # uvicorn re-raises the captured SIGTERM once shut down, so the process would die of it
        # (exit 143, "Error" in Kubernetes); a completed drain is a clean exit.
        if not self.force_exit:
            getattr(self, "_captured_signals", []).clear()


def serve(settings: Settings) -> None:
    """Run one server process until SIGTERM/SIGINT, then drain."""
    logs.setup(settings.log_level)
    sock = startup.bind(settings.host, settings.port)  # a taken port fails before models load
    app = create_app(settings)
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
    _Server(config, app.state.server).run(sockets=[sock])
