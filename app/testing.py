"""Start a real ``lstm-serve`` process, for the tests and the benchmark.

Settings go in as ``LSTM_SERVE_*`` environment variables, the server listens on 127.0.0.1 on a
free port, and :func:`start_server` returns once ``/v2/health/ready`` answers 200 (or raises
with the end of the server's log). Nothing here is used by the server itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A running ``python -m app`` on 127.0.0.1."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    settings: dict[str, str] = field(default_factory=dict)
    grpc_port: int | None = None

    @property
    def grpc_target(self) -> str:
        """``host:port`` of its gRPC server (tritonclient.grpc's ``url``)."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float, poll_s: float = 0.1, probe_timeout_s: float = 1.0,
                   path: str = "/v2/health/ready") -> None:
        """Return once ``path`` answers 200; RuntimeError with the end of the log if the process
        exits first, or (after stopping it) if ``timeout_s`` passes. The benchmark's own servers
        (the floor, granian) are waited for here too."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}{path}", timeout=probe_timeout_s).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(poll_s)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout_s:.0f} s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (the server drains), then wait; killed if it outlives ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


TEST_WORKERS = "LSTM_SERVE_TEST_WORKERS"


def server_env(repository: Path, port: int, settings: dict[str, object]) -> dict[str, str]:
    """The environment of a server on 127.0.0.1:``port``: this one's, less any ``LSTM_SERVE_*``
    of its own, plus the repository, the address and ``LSTM_SERVE_<KEY>`` per setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_SERVE_")}
    env.update(
        {"LSTM_SERVE_MODEL_REPOSITORY": str(repository), "LSTM_SERVE_HOST": "127.0.0.1", "LSTM_SERVE_PORT": str(port)}
    )
    env.update({f"LSTM_SERVE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def start_server(
    repository: Path, log_dir: Path, ready_timeout: float = 90.0, root: Path | None = None, **settings: object
) -> ServerProcess:
    """Start a server with ``LSTM_SERVE_<KEY>`` settings and wait until it reports ready.

    ``root``: run ``python -m app`` from another checkout (the benchmark's "before" baseline).

    ``LSTM_SERVE_TEST_WORKERS`` in the caller's environment sets ``workers`` for servers that do
    not choose it, so one suite runs against one process and against several."""
    if "workers" not in settings and os.environ.get(TEST_WORKERS):
        settings["workers"] = os.environ[TEST_WORKERS]
    port = free_port()
    if "grpc_port" not in settings:
        settings["grpc_port"] = free_port()
    env = server_env(repository, port, settings)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"], env=env, cwd=root or ROOT, stdout=log_path.open("wb"), stderr=subprocess.STDOUT
    )
    grpc_port = settings["grpc_port"]
    server = ServerProcess(proc, port, log_path, {k: str(v) for k, v in settings.items()},
                           None if str(grpc_port).lower() == "none" else int(grpc_port))
    server.wait_ready(ready_timeout)
    return server
