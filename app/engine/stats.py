"""Triton's statistics extension: per model version, what ran, how often, and where time went.

``GET /v2/models[/{name}[/versions/{v}]]/stats`` answers in Triton's form, so tritonclient's
``get_inference_statistics`` and dashboards built for Triton read it unchanged. The numbers are
collected where batches run (``ServedModel.run_batch``, on the worker thread), which is why
this module is self-contained: plain ints behind a lock, no asyncio, no Prometheus, nothing
that cannot live in another process. :meth:`ModelStats.snapshot` and :meth:`ModelStats.merge`
move the numbers between processes as plain dicts.

What each number counts (Triton's definitions, mapped onto this server):

* ``inference_count``: sequences (batch rows) run; ``execution_count``: ONNX Runtime calls.
* per request (``inference_stats``), each ``{"count", "ns"}``:
  ``queue`` from the request's arrival at the model to its batch starting on the worker;
  ``compute_input`` padding the batch (``padding.merge``); ``compute_infer`` ONNX Runtime;
  ``compute_output`` splitting the answer (``padding.split``); every request of a batch counts
  its batch's compute times, as Triton does. ``success`` is queue + compute for requests
  answered; ``fail`` counts requests whose batch failed in ONNX Runtime (500), with their time
  until the failure. Requests refused before reaching the model (400, 413, 503 queue full) and
  requests that timed out in the queue (504) never ran, and are not counted.
* ``batch_stats``: per batch size in sequences, the count and compute times of its executions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

INFERENCE_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
BATCH_PHASES = ("compute_input", "compute_infer", "compute_output")


def _zero(phases: Sequence[str]) -> dict[str, list[int]]:
    return {p: [0, 0] for p in phases}  # phase -> [count, ns]


class ModelStats:
    """Counters of one model version. Thread-safe: batches finish on several worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self._inference = _zero(INFERENCE_PHASES)
        self._batches: dict[int, dict[str, list[int]]] = {}

    def _add(self, phase: str, count: int, ns: int) -> None:
        slot = self._inference[phase]
        slot[0] += count
        slot[1] += ns

    def _record_batch(self, batch_size: int, compute_input_ns: int, compute_infer_ns: int, compute_output_ns: int) -> None:
        """One ONNX Runtime call over ``batch_size`` sequences (the lock held by the caller)."""
        self.execution_count += 1
        slot = self._batches.setdefault(batch_size, _zero(BATCH_PHASES))
        for phase, ns in zip(BATCH_PHASES, (compute_input_ns, compute_infer_ns, compute_output_ns), strict=True):
            slot[phase][0] += 1
            slot[phase][1] += ns

    def record_failure(self, requests: int, ns: int) -> None:
        """``requests`` requests whose batch failed, ``ns`` their summed time until the failure."""
        with self._lock:
            self._add("fail", requests, ns)

    def record_execution(
        self, arrivals_ns: Sequence[int], rows: Sequence[int], started_ns: int, infer_ns: int, infer_end_ns: int, end_ns: int
    ) -> None:
        """A batch that ran, from its ``time.perf_counter_ns()`` stamps: each request's arrival at
        the model, the batch's start, ONNX Runtime's start and end, and the batch's end."""
        compute_input, compute_infer, compute_output = infer_ns - started_ns, infer_end_ns - infer_ns, end_ns - infer_end_ns
        # Summed over the batch's requests, then added once: each request counts once in every
        # phase with the batch's compute times and its own queue time, as Triton counts them.
        # (Request by request, the adds cost ~3 us each on the runtime's thread, under the GIL.)
        if len(arrivals_ns) != len(rows):
            raise ValueError(f"{len(arrivals_ns)} arrivals for {len(rows)} requests")
        requests, sequences = len(rows), sum(rows)
        queue = sum(max(started_ns - a, 0) for a in arrivals_ns)
        with self._lock:
            self.inference_count += sequences
            self._add("queue", requests, queue)
            self._add("compute_input", requests, requests * compute_input)
            self._add("compute_infer", requests, requests * compute_infer)
            self._add("compute_output", requests, requests * compute_output)
            self._add("success", requests, queue + requests * (compute_input + compute_infer + compute_output))
            self.last_inference_ms = time.time_ns() // 1_000_000
            self._record_batch(sequences, compute_input, compute_infer, compute_output)

    def record_failed_execution(self, arrivals_ns: Sequence[int]) -> None:
        """A batch that failed: its requests count as failed, with their time until now."""
        now = time.perf_counter_ns()
        self.record_failure(len(arrivals_ns), sum(max(now - a, 0) for a in arrivals_ns))

    # -- across processes --------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Every counter as plain JSON-friendly data (what another process needs)."""
        with self._lock:
            return {
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference": {p: list(v) for p, v in self._inference.items()},
                "batches": {b: {p: list(v) for p, v in s.items()} for b, s in self._batches.items()},
            }

    def merge(self, snap: dict[str, Any]) -> None:
        """Add another accumulator's :meth:`snapshot` (another process serving the same version)."""
        with self._lock:
            self.last_inference_ms = max(self.last_inference_ms, int(snap["last_inference"]))
            self.inference_count += int(snap["inference_count"])
            self.execution_count += int(snap["execution_count"])
            for phase, (count, ns) in snap["inference"].items():
                self._add(phase, count, ns)
            for size, phases in snap["batches"].items():
                slot = self._batches.setdefault(int(size), _zero(BATCH_PHASES))
                for phase, (count, ns) in phases.items():
                    slot[phase][0] += count
                    slot[phase][1] += ns

    def to_triton(self, name: str, version: str) -> dict[str, Any]:
        """This version's entry of Triton's ``model_stats`` list."""
        snap = self.snapshot()
        return {
            "name": name,
            "version": version,
            "last_inference": snap["last_inference"],
            "inference_count": snap["inference_count"],
            "execution_count": snap["execution_count"],
            "inference_stats": {p: {"count": c, "ns": ns} for p, (c, ns) in snap["inference"].items()},
            "batch_stats": [
                {"batch_size": size, **{p: {"count": c, "ns": ns} for p, (c, ns) in phases.items()}}
                for size, phases in sorted(snap["batches"].items())
            ],
        }
