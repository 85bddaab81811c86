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

from . import __version__, auth, logs
from .config import Settings
from .connections import uvicorn_options
from .errors import install_handlers
from .guard import RequestGuard
from .inference import InferenceFastPath
from .middleware import RequestObserver
from .routes import router
from .runtime import CUDA
from .state import ServerState

log = logging.getLogger("lstm_serve.server")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app; models load when it starts (lifespan), not here."""
    settings = settings or Settings()
    token = auth.load_token(settings)  # before loading models: a bad token setting fails fast
    state = ServerState.create(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(state.repository.load)
        if any(m.provider == CUDA for m in state.repository.all()):
            state.metrics.enable_gpu()
        log.info(
            "ready",
            extra={
                "models": {n: sorted(v) for n, v in state.repository.models.items()},
                "providers": sorted({m.provider for m in state.repository.all()}),
                "repository": str(state.repository.root),
            },
        )
        yield
        state.draining = True
        await state.repository.drain(settings.drain_timeout_s)
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
    # issue 15: token, name/version rules and the body deadline, before any endpoint
    app.add_middleware(RequestGuard, body_timeout_s=settings.body_timeout_s, auth=auth.BearerAuth(token) if token else None)
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


def serve(settings: Settings) -> None:
    """Run one server process until SIGTERM/SIGINT, then drain."""
    logs.setup(settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="auto",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(settings.drain_timeout_s, 0.1),
        server_header=False,
        **uvicorn_options(settings),  # issue 15: connection limits and timeouts (app/connections.py)
    )
    _Server(config, app.state.server).run()
