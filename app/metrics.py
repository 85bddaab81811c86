"""Prometheus metrics, all created here, in a registry of the server's own.

Names carry the ``lstm_serve_`` namespace and base units; labels are bounded (model name from
the repository, never a name a client made up: requests for unknown models count under
``model=""``). Durations are histograms, not cumulative counters, so p99 is a query away:
``histogram_quantile(0.99, sum by (le) (rate(lstm_serve_request_duration_seconds_bucket[1m])))``.

With ``workers=1`` the registry is this process's own. With several processes (HTTP workers
and the engine, see ``supervisor``) prometheus-client's multiprocess mode is on: each process
writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR`` and any worker's ``/metrics``
merges them, so a request counts once whichever worker served it. Request families are
written by the workers, queue and batch families by the engine; gauges say how to merge.

Series that belong to one model version carry a ``version`` label (queue, batch, inference,
padding, sequences, model_info); the request families are per model, since a request addresses
a model and is counted even when no version answers it (404, 503). When a version unloads, its
series are removed (``Metrics.retire``). In multiprocess mode prometheus-client cannot remove a
series (its value lives on in the engine's mmap file and the library only warns), so the
exposition also drops every series whose (model, version) the serving catalog no longer holds
(``exposition(served=...)``): the same view either way. The file entries stay, a few bytes per
version ever loaded, until the server restarts; a version loaded again continues its counters.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("lstm_serve.metrics")
# `_created` series would double the series count for nothing a dashboard or alert uses.
disable_created_metrics()

PREFIX = "lstm_serve"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# 100 µs to 10 s: sub-millisecond batch-1 inference up to a request stuck behind a full queue.
DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
PADDING_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

# name -> (type, labels): the exposition's fixed shape, also what the deployment files may use.
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    f"{PREFIX}_request_duration_seconds": ("histogram", ("model", "code", "protocol")),
    f"{PREFIX}_queue_duration_seconds": ("histogram", ("model", "version")),
    f"{PREFIX}_inference_duration_seconds": ("histogram", ("model", "version")),
    f"{PREFIX}_batch_size": ("histogram", ("model", "version")),
    f"{PREFIX}_padding_ratio": ("histogram", ("model", "version")),
    f"{PREFIX}_requests_total": ("counter", ("model", "code", "protocol")),
    f"{PREFIX}_sequences_total": ("counter", ("model", "version")),
    f"{PREFIX}_queue_depth": ("gauge", ("model", "version")),
    f"{PREFIX}_inflight_requests": ("gauge", ()),
    f"{PREFIX}_model_info": ("gauge", ("model", "version", "provider")),
    f"{PREFIX}_live_sequences": ("gauge", ("model",)),
    f"{PREFIX}_sequences_evicted_total": ("counter", ("model",)),
    f"{PREFIX}_gpu_memory_used_bytes": ("gauge", ("gpu",)),
    f"{PREFIX}_gpu_utilization_ratio": ("gauge", ("gpu",)),
}
GPU_FAMILIES = (f"{PREFIX}_gpu_memory_used_bytes", f"{PREFIX}_gpu_utilization_ratio")


def exposed_metric_names() -> set[str]:
    """Every sample name the server can expose (histograms expanded, GPU gauges included)."""
    names: set[str] = set()
    for name, (kind, _) in FAMILIES.items():
        if kind == "histogram":
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
        else:
            names.add(name)
    return names


def batch_size_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Powers of two up to the largest batch, which is always a bucket of its own."""
    buckets, b = [], 1
    while b < max_batch_size:
        buckets.append(float(b))
        b *= 2
    buckets.append(float(max_batch_size))
    return tuple(buckets)


class Tally:
    """Metric updates made on the event loop, written to their series once per loop turn.

    Why: prometheus-client takes a lock for every update and searches a histogram's buckets for
    every observation: a request made five updates (in-flight up and down, queue depth, queue
    time, request duration and count), ~8 us of the event loop per request on a 2-core host,
    as much as the rest of its bookkeeping. Requests answered in one turn are many (a batch's
    worth), so the turn's updates are summed per series and written at its end: one ``inc``
    per series and per touched histogram bucket. The access log writes its lines the same way.

    A scrape sees every update made before it: the tally is written at the end of the turn it
    was made in, which comes before the loop reads the next request, and ``Metrics.exposition``
    writes what is pending first. Only the event-loop thread of the process may use it; work on
    other threads updates its series directly.
    """

    __slots__ = ("_observed", "_added", "_scheduled")

    def __init__(self) -> None:
        self._observed: dict[Any, list[float]] = {}  # histogram child -> values
        self._added: dict[Any, float] = {}  # counter or gauge (child) -> amount
        self._scheduled = False

    def observe(self, histogram: Any, value: float) -> None:
        """``histogram.observe(value)``, written at the end of this loop turn."""
        values = self._observed.get(histogram)
        if values is None:
            self._observed[histogram] = [value]
            self._schedule()
        else:
            values.append(value)

    def add(self, series: Any, amount: float = 1.0) -> None:
        """``series.inc(amount)`` (a counter, or a gauge: ``amount`` may be negative), written
        at the end of this loop turn."""
        added = self._added
        if series in added:
            added[series] += amount
        else:
            added[series] = amount
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop in this thread: no turn to wait for
                self.flush()
                return
            self._scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is pending now."""
        self._scheduled = False
        observed, self._observed = self._observed, {}
        added, self._added = self._added, {}
        for histogram, values in observed.items():
            _observe_all(histogram, values)
        for series, amount in added.items():
            if amount:
                series.inc(amount)


def _observe_all(histogram: Any, values: list[float]) -> None:
    """``histogram.observe(v)`` for every value, with one ``inc`` per touched bucket. Reads
    prometheus-client's own fields of a histogram child (its bounds, bucket and sum values, as
    ``Histogram.observe`` does); falls back to ``observe`` where they are not there.
    tests/app/test_metrics.py holds the result equal to ``observe`` one value at a time."""
    try:
        bounds, buckets, total = histogram._upper_bounds, histogram._buckets, histogram._sum
    except AttributeError:  # pragma: no cover - another prometheus-client layout
        for v in values:
            histogram.observe(v)
        return
    counts: dict[int, int] = {}
    for v in values:
        if v == v:  # NaN counts in the sum only, as observe
            i = bisect_left(bounds, v)  # the first bound >= v, as observe's ``v <= bound``
            counts[i] = counts.get(i, 0) + 1
    total.inc(sum(values))
    for i, n in counts.items():
        buckets[i].inc(n)


@dataclass(frozen=True)
class ModelMetrics:
    """The children of one model's families, bound once at load (no label lookups per request)."""

    queue_duration: Histogram
    inference_duration: Histogram
    batch_size: Histogram
    padding_ratio: Histogram
    sequences: Counter
    queue_depth: Gauge
    tally: Tally  # the process's: queue depth and queue time are updated on the event loop


class Metrics:
    """The server's metric families in a registry of its own (tests run several servers)."""

    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tally = Tally()
        self._request_children: dict[tuple[str, int, str], tuple[Histogram, Counter]] = {}
        r = self.registry
        p = PREFIX
        self.request_duration = Histogram(
            f"{p}_request_duration_seconds", "Whole inference request, server side.",
            ["model", "code", "protocol"], buckets=DURATION_BUCKETS, registry=r,
        )
        self.queue_duration = Histogram(
            f"{p}_queue_duration_seconds", "Time a request waited in the batcher's queue.",
            ["model", "version"], buckets=DURATION_BUCKETS, registry=r,
        )
        self.inference_duration = Histogram(
            f"{p}_inference_duration_seconds", "ONNX Runtime time per batch.",
            ["model", "version"], buckets=DURATION_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            f"{p}_batch_size", "Sequences per ONNX Runtime call.",
            ["model", "version"], buckets=batch_size_buckets(max_batch_size), registry=r,
        )
        self.padding_ratio = Histogram(
            f"{p}_padding_ratio", "Padded time steps / all time steps in a batch.",
            ["model", "version"], buckets=PADDING_BUCKETS, registry=r,
        )
        self.requests = Counter(
            f"{p}_requests", "Inference requests answered, by status code.", ["model", "code", "protocol"], registry=r,
        )
        self.sequences = Counter(
            f"{p}_sequences", "Sequences run through the model.", ["model", "version"], registry=r,
        )
        self.queue_depth = Gauge(
            f"{p}_queue_depth", "Sequences waiting in the batcher's queue.", ["model", "version"], registry=r,
            multiprocess_mode="livesum",
        )
        self.inflight = Gauge(
            f"{p}_inflight_requests", "Inference requests being handled.", registry=r,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            f"{p}_model_info", "Loaded model versions and their execution provider.",
            ["model", "version", "provider"], registry=r, multiprocess_mode="livemax",
        )
        self.live_sequences = Gauge(
            f"{p}_live_sequences", "Sequences whose LSTM state the server keeps (server-kept streaming).",
            ["model"], registry=r, multiprocess_mode="livesum",
        )
        self.sequences_evicted = Counter(
            f"{p}_sequences_evicted", "Sequences evicted after sequence_idle_timeout_s without a chunk.",
            ["model"], registry=r,
        )
        self._gpu: Collector | None = None

    def _versioned(self) -> tuple[Histogram | Counter | Gauge, ...]:
        return (self.queue_duration, self.inference_duration, self.batch_size, self.padding_ratio,
                self.sequences, self.queue_depth)

    def for_model(self, name: str, version: str, provider: str) -> ModelMetrics:
        self.model_info.labels(name, version, provider).set(1)
        self.live_sequences.labels(name)  # every model's series from the start, at 0
        self.sequences_evicted.labels(name)
        return ModelMetrics(
            queue_duration=self.queue_duration.labels(name, version),
            inference_duration=self.inference_duration.labels(name, version),
            batch_size=self.batch_size.labels(name, version),
            padding_ratio=self.padding_ratio.labels(name, version),
            sequences=self.sequences.labels(name, version),
            queue_depth=self.queue_depth.labels(name, version),
            tally=self.tally,
        )

    def retire(self, name: str, version: str, provider: str) -> None:
        """A version unloaded: its series leave the exposition. In multiprocess mode removal is
        not implemented by prometheus-client (the value stays in this process's file), so
        ``exposition(served=...)`` filters those series instead."""
        if os.environ.get(MULTIPROC_ENV):
            return
        for family in self._versioned():
            family.remove(name, version)
        self.model_info.remove(name, version, provider)

    def observe_request(self, model: str, code: int, seconds: float, protocol: str = "http") -> None:
        """One answered inference request. ``code`` is the Open Inference Protocol (HTTP) status
        of the outcome whatever the transport (a gRPC INVALID_ARGUMENT counts as 400), so one
        alert on ``code=~"5.."`` covers both; ``protocol`` is ``http`` or ``grpc``."""
        # Children looked up once per (model, code, protocol): ``labels()`` costs more than the
        # update itself, and the label sets are bounded (repository names, status codes).
        key = (model, code, protocol)
        children = self._request_children.get(key)
        if children is None:
            c = str(code)
            children = self._request_children[key] = (
                self.request_duration.labels(model, c, protocol), self.requests.labels(model, c, protocol))
        tally = self.tally
        tally.observe(children[0], seconds)
        tally.add(children[1])

    def inflight_add(self, n: int) -> None:
        """A request started (1) or ended (-1): the in-flight gauge, on the event loop."""
        self.tally.add(self.inflight, n)

    def enable_gpu(self) -> None:
        """Add NVML gauges (device memory, utilisation) when a GPU serves; absent on CPU."""
        try:
            self._gpu = _GpuCollector()
            self.registry.register(self._gpu)
        except Exception as exc:  # NVML missing or no device: the gauges stay absent
            log.warning("GPU metrics disabled: %s", exc)

    def exposition(self, served: set[tuple[str, str]] | None = None) -> bytes:
        """The text format. ``served``: the (model, version) pairs being served; in
        multiprocess mode, series of other versions (unloaded ones) are left out."""
        self.tally.flush()
        path = os.environ.get(MULTIPROC_ENV)
        if not path:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        collector = _InitialisedFiles(None, path)
        registry.register(_ServedOnly(collector, served) if served is not None else collector)
        if self._gpu is not None:
            registry.register(self._gpu)
        return generate_latest(registry)


class _InitialisedFiles(multiprocess.MultiProcessCollector):
    """prometheus_client's multiprocess collector, without the files another process is still
    creating: ``MmapedDict`` opens a new file, then grows it, and a scrape in between failed with
    ``struct.error`` (a 500 from /metrics right after a worker's first request, seen in the image
    check). A file too short for its header holds no value yet: leaving it out loses nothing."""

    def collect(self) -> Iterable[Metric]:
        files = [f for f in glob.glob(os.path.join(self._path, "*.db")) if _initialised(f)]
        return self.merge(files, accumulate=True)


def _initialised(path: str) -> bool:
    try:
        return os.path.getsize(path) >= 8  # the used-bytes header and its padding
    except OSError:  # removed meanwhile (a worker's files are cleaned up when it exits)
        return False


class _ServedOnly(Collector):
    """A multiprocess collector's families without the series of versions no longer served."""

    def __init__(self, inner: Collector, served: set[tuple[str, str]]) -> None:
        self._inner = inner
        self._served = served

    def collect(self) -> Iterable[Metric]:
        for family in self._inner.collect():
            family.samples = [
                s for s in family.samples
                if "version" not in s.labels or (s.labels.get("model"), s.labels["version"]) in self._served
            ]
            yield family


class _GpuCollector(Collector):
    def __init__(self) -> None:
        import pynvml  # from nvidia-ml-py, part of the gpu extra

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if not self._handles:
            raise RuntimeError("NVML sees no GPU")

    def collect(self) -> Iterable[GaugeMetricFamily]:
        mem = GaugeMetricFamily(GPU_FAMILIES[0], "GPU memory in use.", labels=["gpu"])
        util = GaugeMetricFamily(GPU_FAMILIES[1], "GPU utilisation (0-1) over the last sample period.", labels=["gpu"])
        for i, h in enumerate(self._handles):
            mem.add_metric([str(i)], float(self._nvml.nvmlDeviceGetMemoryInfo(h).used))
            util.add_metric([str(i)], self._nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0)
        yield mem
        yield util

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []
