"""Several processes, one server: HTTP workers, a listening socket each, and (with
``engine=shared``) the engine process behind them, started, watched and stopped from here.

Why processes: one Python process runs HTTP parsing, decoding, encoding and batch assembly on
one event loop under one GIL, and on two cores left a third of a core idle at saturation.
Several HTTP workers spread that work; one engine keeps batches global and one copy of each
model (vLLM splits its API servers from its engine core the same way).

The supervisor (PID 1 in a container) binds the socket, starts the engine and waits until its
models are loaded, then starts the workers, and accepts every connection itself: ``handoff``
passes each to the worker with the fewest open connections (the kernel's SO_REUSEPORT hash split
32 connections up to 25/7). A replaced worker gets a new channel; the others take the new
connections meanwhile. Children come from a
fork server that has imported the server's modules but never ONNX Runtime (which loads lazily,
in the engine only), so nothing (CUDA above all) is initialised before a fork, and a replaced
worker is up in a fraction of a second rather than after a fresh interpreter's imports. Each
child asks the kernel to SIGTERM it when its parent dies (the fork server ends with the
supervisor). prometheus-client's multiprocess mode gives one
``/metrics`` view from whichever worker answers, in a fresh directory per start.

Faults: a worker that dies is replaced (within a second) while the others keep serving; the
engine dying stops every worker (their waiting requests were answered with 503 the moment the
link dropped) and the supervisor exits 1, so Kubernetes restarts the pod. SIGTERM: the workers
drain (readiness false at once, accepted requests answered), then the engine, and every
process exits 0 within the drain timeout.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from app.config import Settings
from app.metrics import MULTIPROC_ENV
from app.processes import handoff
from app.startup import StartupError

log = logging.getLogger("lstm_serve.supervisor")

_CRASH_WINDOW_S = 30.0
_CRASH_LIMIT = 5  # worker deaths within the window that mean "crash loop": stop, let Kubernetes back off


def _prctl(option: int, value: object) -> bool:
    """Linux's prctl(2) for this process; False where there is none."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)
        return True
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False


def die_with_parent(supervisor: int) -> None:
    """Ask Linux to SIGTERM this process when its parent (the fork server, which ends with the
    supervisor) dies, so no child outlives a killed supervisor and no request waits on an orphan."""
    parent = os.getppid()
    if not _prctl(1, signal.SIGTERM):  # PR_SET_PDEATHSIG
        return
    if os.getppid() != parent or not _alive(supervisor):  # gone before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def name_process(name: str) -> None:
    """Show the process's role in ``ps``, ``top`` and ``/proc/<pid>/comm`` (Linux keeps 15
    bytes): every child is otherwise "python", and the image check finds the workers by it."""
    _prctl(15, name.encode()[:15])  # PR_SET_NAME


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _engine_main(settings: Settings, address: str, conn: object, parent: int) -> None:
    die_with_parent(parent)
    name_process("lstm-serve-eng")
    from app.processes import engine_server

    raise SystemExit(engine_server.run(settings, address, conn))  # type: ignore[arg-type]


# What a worker process runs: ``(settings, channel, engine_address, connection_slots, index)``,
# ``channel`` the worker's end of its ``handoff`` pair, on which its connections arrive. The
# composition root (``app.server.serve_worker``) passes it in, so this package starts front
# ends without importing them.
Worker = Callable[[Settings, socket.socket, "str | None", Any, int], None]


def _worker_main(worker: Worker, settings: Settings, channel: socket.socket, address: str | None, parent: int,
                 slots: Any, index: int) -> None:
    die_with_parent(parent)
    name_process("lstm-serve-http")
    worker(settings, channel, address, slots, index)


class Supervisor:
    def __init__(self, settings: Settings, sock: socket.socket, run_dir: Path, worker: Worker) -> None:
        self.settings = settings
        self.worker = worker
        self.run_dir = run_dir
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload([worker.__module__, "app.processes.engine_server"])
        self.address = f"\0lstm-serve-{os.getpid()}-{secrets.token_hex(6)}" if settings.shared_engine else None
        self.engine: BaseProcess | None = None
        # Each worker's open connections (``connections.OpenConnections``): max_connections is
        # the server's, not each worker's.
        self.connection_slots = self.ctx.Array("i", settings.workers, lock=False)
        self.acceptor = handoff.Acceptor(sock, self.connection_slots)
        self.workers: list[BaseProcess] = []
        self.deaths: list[float] = []
        self.stop_signal: int | None = None

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.stop_signal = sig

    # -- start -------------------------------------------------------------------------------
    def _start_engine(self) -> bool:
        parent_end, child_end = self.ctx.Pipe(duplex=False)
        self.engine = self.ctx.Process(
            target=_engine_main, args=(self.settings, self.address, child_end, os.getpid()), name="lstm-serve-engine"
        )
        self.engine.start()
        child_end.close()
        while self.stop_signal is None:
            ready = wait([parent_end, self.engine.sentinel], timeout=0.25)
            if parent_end in ready:
                try:
                    kind, detail = parent_end.recv()
                except EOFError:
                    kind, detail = "error", f"engine process exited with code {self.engine.exitcode}"
                if kind == "ready":
                    log.info("engine started", extra={"pid": self.engine.pid, **detail})
                    return True
                self._stop_all()
                raise StartupError(detail)
            if self.engine.sentinel in ready:
                self._stop_all()
                raise StartupError(f"the engine process exited with code {self.engine.exitcode} while loading models")
        return False

    def _start_worker(self, index: int) -> BaseProcess:
        self.connection_slots[index] = 0  # a dead worker's connections died with it
        ours, theirs = handoff.channel()
        w = self.ctx.Process(
            target=_worker_main, args=(self.worker, self.settings, theirs, self.address, os.getpid(), self.connection_slots, index),
            name="lstm-serve-http",
        )
        w.start()
        theirs.close()  # the worker has its own copy
        self.acceptor.attach(index, ours)
        return w

    # -- run ---------------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self.address is not None and not self._start_engine():
            self._stop_all()
            return 1
        self.workers = [self._start_worker(i) for i in range(self.settings.workers)]
        self.acceptor.start()
        log.info("supervising", extra={"workers": [w.pid for w in self.workers], "engine": self.settings.engine})
        code = self._watch()
        self._stop_all()
        return code

    def _watch(self) -> int:
        while self.stop_signal is None:
            sentinels = [w.sentinel for w in self.workers]
            if self.engine is not None:
                sentinels.append(self.engine.sentinel)
            wait(sentinels, timeout=0.25)
            if self.engine is not None and not self.engine.is_alive() and self.stop_signal is None:
                log.error("engine process died (exit code %s); stopping the server", self.engine.exitcode)
                return 1
            for i, w in enumerate(self.workers):
                if w.is_alive() or self.stop_signal is not None:
                    continue
                _mark_dead(w.pid)
                now = time.monotonic()
                self.deaths = [t for t in self.deaths if now - t < _CRASH_WINDOW_S] + [now]
                if len(self.deaths) >= _CRASH_LIMIT:
                    log.error("%d worker deaths in %.0f s; giving up", len(self.deaths), _CRASH_WINDOW_S)
                    return 1
                self.workers[i] = self._start_worker(i)
                log.error("HTTP worker %s died (exit code %s); started another", w.pid, w.exitcode,
                          extra={"dead": w.pid, "pid": self.workers[i].pid})
        log.info("received signal %s; draining", self.stop_signal)
        return 0

    # -- stop --------------------------------------------------------------------------------
    def _stop_all(self) -> None:
        """New connections refused, then the workers (they finish their requests on the
        engine), then the engine."""
        self.acceptor.stop()
        grace = self.settings.drain_timeout_s + 5.0
        _terminate([w for w in self.workers if w.is_alive()], grace)
        if self.engine is not None and self.engine.is_alive():
            _terminate([self.engine], grace)
        codes = {f"worker {w.pid}": w.exitcode for w in self.workers}
        if self.engine is not None:
            codes[f"engine {self.engine.pid}"] = self.engine.exitcode
        log.info("stopped", extra={"exit_codes": codes})


def _terminate(procs: list[BaseProcess], grace_s: float) -> None:
    for p in procs:
        if p.pid is not None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            log.error("process %s did not stop in %.0f s; killing it", p.pid, grace_s)
            p.kill()
            p.join()


def _mark_dead(pid: int | None) -> None:
    if pid is None or not os.environ.get(MULTIPROC_ENV):
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def run(settings: Settings, sock: socket.socket, worker: Worker) -> int:
    """Serve with ``settings.workers`` HTTP processes on ``sock`` until SIGTERM/SIGINT; the
    exit status. An engine that cannot load its models raises ``StartupError`` (one line)."""
    sock.listen(2048)
    run_dir = Path(tempfile.mkdtemp(prefix="lstm-serve-"))
    metrics_dir = run_dir / "metrics"
    metrics_dir.mkdir()
    os.environ[MULTIPROC_ENV] = str(metrics_dir)  # before any child imports prometheus_client
    try:
        return Supervisor(settings, sock, run_dir, worker).run()
    finally:
        sock.close()
        shutil.rmtree(run_dir, ignore_errors=True)
