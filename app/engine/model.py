"""A served model version: its runtime, its batcher, and the glue between them.

``run_batch`` is what a batch does on its worker thread: pad (``padding.merge``), run ONNX
Runtime, split (``padding.split``). It runs off the event loop, so padding and copying cost no
loop time.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from app.engine import padding
from app.engine.batcher import Batcher
from app.engine.catalog import ModelInfo
from app.config import Settings
from app.contract import ModelSpec, full_lengths
from app.metrics import Metrics
from app.engine.model_settings import Batching
from app.engine.runtime import Runtime
from app.v2.sequences import Job, Sequences
from app.engine.scheduling import OldestClosestLength
from app.engine.stats import ModelStats

log = logging.getLogger("lstm_serve.model")


class ServedModel:
    def __init__(
        self, name: str, version: int, path: Path, settings: Settings, metrics: Metrics, batching: Batching | None = None
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.batching = batching or Batching(
            max_batch_size=settings.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            max_queue_size=settings.max_queue_size,
        )
        self.runtime = Runtime(path, settings)
        self.spec: ModelSpec = self.runtime.spec
        self._all_metrics = metrics
        self._metrics = metrics.for_model(name, str(version), self.runtime.provider)
        self.batcher: Batcher[Job, dict[str, np.ndarray]] = Batcher(
            f"{name}:{version}",
            self.run_batch,
            max_batch_size=self.batching.max_batch_size,
            max_queue_size=self.batching.max_queue_size,
            max_delay_s=self.batching.max_queue_delay_ms / 1000.0,
            max_in_flight=settings.batches_in_flight,
            dispatch_when_idle=settings.dispatch_when_idle,
            metrics=self._metrics,
            policy=OldestClosestLength(settings.max_length_ratio),
        )
        self.ready = False
        self.stats = ModelStats()

    @property
    def provider(self) -> str:
        return self.runtime.provider

    def run_batch(self, jobs: list[Job]) -> list[dict[str, np.ndarray]]:
        """Pad, run and split one batch (on a worker thread)."""
        started_ns = time.perf_counter_ns()
        seqs = [j.sequences for j in jobs]
        merged = padding.merge(seqs, self.spec)
        wanted = [n for n in self.spec.output_names if any(n in j.outputs for j in jobs)]
        start = time.perf_counter()
        infer_ns = time.perf_counter_ns()
        try:
            outputs = self.runtime.run(merged.feeds, wanted)
        except Exception:
            self.stats.record_failed_execution([j.arrival_ns for j in jobs])
            raise
        infer_end_ns = time.perf_counter_ns()
        self._metrics.inference_duration.observe(time.perf_counter() - start)
        self._metrics.padding_ratio.observe(merged.padding_ratio)
        self._metrics.sequences.inc(merged.sequences)
        per_request = padding.split(outputs, seqs, self.spec)
        results = [{n: r[n] for n in j.outputs} for j, r in zip(jobs, per_request)]
        self.stats.record_execution(
            [j.arrival_ns for j in jobs], [s.n for s in seqs], started_ns, infer_ns, infer_end_ns, time.perf_counter_ns()
        )
        return results

    def info(self, ready: bool, default: bool = False) -> ModelInfo:
        return ModelInfo(self.name, self.version, self.spec, self.provider, ready, default,
                         self.batching.max_batch_size, self.batching.max_queue_size)

    async def close(self, timeout_s: float, retire_metrics: bool = True) -> None:
        """Answer what is queued, stop, and (unless the same version is replaced in place,
        whose series the new copy keeps) take this version's series out of /metrics."""
        self.ready = False
        await self.batcher.drain(timeout_s)
        if retire_metrics:
            self._all_metrics.retire(self.name, str(self.version), self.provider)

    def warm_up(self) -> None:
        """Run the graph at batch 1 and at the largest batch so first requests pay no setup."""
        rng = np.random.default_rng(0)
        for n in sorted({1, self.batching.max_batch_size}):
            x = rng.standard_normal((n, 8, self.spec.input_size)).astype(np.float32)
            merged = padding.merge([Sequences(x, full_lengths(n, 8))], self.spec)
            self.runtime.run(merged.feeds, list(self.spec.output_names))  # not counted in metrics
        self.ready = True
