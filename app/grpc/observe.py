"""What the gRPC front end reports per inference call: the request log of every front end
(:mod:`app.observe`: same histogram with ``protocol="grpc"``, same access-line fields plus
``protocol`` and ``rpc``), fed from gRPC metadata."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from app import observe
from app.metrics import Metrics


def request_id(metadata: Any) -> str:
    """The client's ``x-request-id`` metadata when it is a sane id, else a fresh one."""
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str):
            return observe.request_id(value)
    return observe.request_id(None)


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
        self.requests = observe.RequestLog(metrics, access_log, protocol="grpc")

    def done(self, call: Call, code: int) -> None:
        self.requests.done(call.rid, call.info, code, time.perf_counter() - call.start, protocol="grpc", rpc=call.rpc)
