"""A real ``python -m app`` process for one setting, and its Prometheus metrics.

Started the way tests/conftest.py starts servers: ``LSTM_SERVE_*`` settings in the
environment, 127.0.0.1 on a free port, ready once /v2/health/ready answers 200. A fresh server
per setting keeps each setting's peak RSS (VmHWM) its own.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import proc

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log_path: Path
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_s(self) -> float:
        """The server process and its children (utime+stime+cutime+cstime), seconds."""
        return proc.pid_cpu(self.pid, children=True)

    def memory(self) -> dict[str, float]:
        return proc.memory(self.pid)

    def metrics(self) -> Metrics:
        return Metrics.parse(httpx.get(f"{self.url}/metrics", timeout=30).text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        proc.untrack(self.pid)


def start(repository: Path, log_dir: Path, settings: dict[str, object]) -> Server:
    """Start a server with ``LSTM_SERVE_<KEY>`` settings; wait until ready (90 s at most)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_SERVE_")}
    env.update({"LSTM_SERVE_MODEL_REPOSITORY": str(repository), "LSTM_SERVE_HOST": "127.0.0.1",
                "LSTM_SERVE_PORT": str(port)})
    env.update({f"LSTM_SERVE_{k.upper()}": str(v) for k, v in settings.items()})
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    p = subprocess.Popen([sys.executable, "-m", "app"], env=env, cwd=ROOT,
                         stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    proc.track(p.pid)
    srv = Server(p, port, log_path, {k: str(v) for k, v in settings.items()})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if p.poll() is not None:
            proc.untrack(p.pid)
            raise RuntimeError(f"server exited with {p.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{srv.url}/v2/health/ready", timeout=1).status_code == 200:
                return srv
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    srv.stop()
    raise RuntimeError(f"server not ready in 90 s:\n{log_path.read_text()[-3000:]}")


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
