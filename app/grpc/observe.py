"""One access-log line and one request observation per inference call, as HTTP writes them
(``app.http.middleware``): same JSON fields, same histogram, ``protocol="grpc"``, and ``code``
the Open Inference Protocol status of the outcome so one alert on ``code=~"5.."`` covers both."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from app.logs import AccessLog
from app.metrics import Metrics

_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id(metadata: Any) -> str:
    """The client's ``x-request-id`` metadata when it is a sane id, else a fresh random one."""
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str) and _VALID_ID.match(value):
            return value
    return os.urandom(16).hex()


@dataclass
class Call:
    """What one inference call reports once answered (filled in as it goes)."""

    rid: str
    rpc: str
    start: float = field(default_factory=time.perf_counter)
    info: dict[str, Any] = field(default_factory=dict)


class Observer:
    """Metrics and access log of the gRPC inference calls of one process."""

    def __init__(self, metrics: Metrics, access_log: bool) -> None:
        self.metrics = metrics
        self.access = AccessLog(access_log)
        self.pid = os.getpid()

    def done(self, call: Call, code: int) -> None:
        elapsed = time.perf_counter() - call.start
        info = call.info
        model = info.get("model", "")
        self.metrics.observe_request(model, code, elapsed, protocol="grpc")
        if self.access.enabled:
            self.access.write({
                "request_id": call.rid,
                "model": model,
                "version": info.get("version"),
                "code": code,
                "latency_ms": round(elapsed * 1000, 3),
                "batch_size": info.get("batch_size"),
                "queue_ms": info.get("queue_ms"),
                "inference_ms": info.get("inference_ms"),
                "error": info.get("error"),
                "pid": self.pid,
                "protocol": "grpc",
                "rpc": call.rpc,
            })
