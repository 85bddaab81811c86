"""A real ``python -m app`` process for one setting, and its Prometheus metrics.

Started by ``app.testing`` as the tests start theirs (``LSTM_SERVE_*`` settings in the
environment, 127.0.0.1 on a free port, ready once /v2/health/ready answers 200). A fresh server
per setting keeps each setting's peak RSS (VmHWM) its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.testing import ServerProcess, start_server

from . import proc


class Server(ServerProcess):
    """A benchmark server: a ServerProcess whose CPU and memory the bench reads from /proc."""

    def cpu_s(self) -> float:
        """The server's processes (supervisor, engine, workers, when several), seconds."""
        return proc.tree_cpu(self.pid)

    def memory(self) -> dict[str, float]:
        return proc.memory(self.pid)

    def metrics(self) -> Metrics:
        return Metrics.parse(httpx.get(f"{self.url}/metrics", timeout=30).text)

    def stop(self, timeout: float = 30.0) -> int:
        code = super().stop(timeout)
        proc.untrack(self.pid)
        return code


def start(repository: Path, log_dir: Path, settings: dict[str, object], root: Path | None = None) -> Server:
    """Start a server with ``LSTM_SERVE_<KEY>`` settings; wait until ready (90 s at most).
    ``root``: another checkout to run (a "before" baseline), else this one."""
    p = start_server(repository, log_dir, root=root, **settings)
    proc.track(p.pid)
    return Server(p.proc, p.port, p.log_path, p.settings, p.grpc_port)


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Metrics:
    """Samples of one /metrics scrape: name -> list of (labels, value)."""

    samples: dict[str, list[tuple[dict[str, str], float]]]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = _LINE.match(line)
            if m:
                labels = dict(_LABEL.findall(m.group(2) or ""))
                out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
        return cls(out)

    def total(self, name: str, **match: str) -> float:
        return sum(v for lab, v in self.samples.get(name, []) if all(lab.get(k) == x for k, x in match.items()))

    def buckets(self, name: str, **match: str) -> dict[float, float]:
        """Cumulative histogram buckets: upper bound -> count."""
        return {float(lab["le"]): v for lab, v in self.samples.get(f"{name}_bucket", [])
                if all(lab.get(k) == x for k, x in match.items())}


def histogram_delta(a: Metrics, b: Metrics, name: str, model: str) -> dict:
    """What a histogram gained between two scrapes: count, sum, mean and per-bucket counts."""
    count = b.total(f"{name}_count", model=model) - a.total(f"{name}_count", model=model)
    total = b.total(f"{name}_sum", model=model) - a.total(f"{name}_sum", model=model)
    ba, bb = a.buckets(name, model=model), b.buckets(name, model=model)
    cum = {le: bb[le] - ba.get(le, 0.0) for le in sorted(bb)}
    per, prev = {}, 0.0
    for le, c in cum.items():
        per[le] = c - prev
        prev = c
    return {"count": count, "sum": total, "mean": total / count if count else float("nan"), "buckets": per}
