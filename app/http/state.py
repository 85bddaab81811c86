"""What one HTTP process holds: settings, metrics, the engine it talks to, and whether it drains."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app.config import Settings
from app.engine.engine import Engine
from app.metrics import Metrics
from app.v2.request import Limits


@dataclass
class ServerState:
    settings: Settings
    metrics: Metrics
    engine: Engine
    limits: Limits
    draining: bool = False
    started: bool = False
    # What else this process serves (the gRPC front end) and must stop, answering its calls in
    # flight, once HTTP has drained and before the engine does.
    before_engine_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def start_engine(self) -> None:
        """Start the engine once (``serve`` starts it before listening; in-process users of
        ``create_app`` get it from the lifespan)."""
        if not self.started:
            await self.engine.start()
            self.started = True

    @property
    def ready(self) -> bool:
        return self.engine.ready and not self.draining

    @classmethod
    def create(cls, settings: Settings, engine: Engine, metrics: Metrics) -> ServerState:
        return cls(
            settings=settings,
            metrics=metrics,
            engine=engine,
            limits=Limits(settings.max_batch_size, settings.max_sequence_length),
        )
