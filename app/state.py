"""What one running server holds: settings, metrics, the repository, and whether it drains."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings
from .metrics import Metrics
from .protocol import Limits
from .repository import Repository


@dataclass
class ServerState:
    settings: Settings
    metrics: Metrics
    repository: Repository
    limits: Limits
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.repository.ready and not self.draining

    @classmethod
    def create(cls, settings: Settings) -> ServerState:
        metrics = Metrics(settings.max_batch_size)
        return cls(
            settings=settings,
            metrics=metrics,
            repository=Repository(settings, metrics),
            limits=Limits(settings.max_batch_size, settings.max_sequence_length),
        )
