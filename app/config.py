"""Server settings: one pydantic-settings class, so this file *is* the configuration reference.

Every field reads the environment variable ``LSTM_SERVE_<FIELD>`` (for example
``LSTM_SERVE_MAX_BATCH_SIZE=32``) and is also a ``lstm-serve`` flag (``--max-batch-size 32``).
Defaults are the values measured to serve best on a small CPU machine (see bench/results).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "LSTM_SERVE_"
# The word that leaves an optional setting unset, as a flag or an environment variable
# (``--intra-op-threads none``); pydantic's ``null`` is not something a user should need to know.
NONE = "none"
# The repository shipped with the project (the demo model), found from this file rather than
# the working directory, so a bare `lstm-serve` works from anywhere in a checkout.
SHIPPED_REPOSITORY = Path(__file__).resolve().parents[1] / "models"


class Settings(BaseSettings):
    """All knobs of one lstm-serve process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    model_repository: Path = Field(None, validate_default=True)  # type: ignore[assignment]
    """Model repository: ``<repository>/<model>/<version>/model.onnx``. Relative paths are
    resolved against the working directory. Unset (``None``), it is the ``models/`` directory
    shipped beside the ``app`` package (the demo model), whatever the working directory."""

    model_versions: dict[str, list[int]] = Field(default_factory=dict)
    """Versions to load per model, e.g. ``{"demo": [1, 2]}`` (JSON in the environment),
    overriding the ``version_policy`` of the model's ``settings.json``. Other models load what
    their settings file selects (default: the latest version)."""

    model_control_mode: Literal["none", "explicit", "poll"] = "none"
    """Changing models at run time (Triton's names). ``none``: the models loaded at start serve
    until the server stops; ``POST /v2/repository/models/{name}/load`` and ``/unload`` answer
    403 (the index still works). ``explicit``: those calls load and unload. ``poll``: the same
    calls, and the repository is also re-read every ``repository_poll_s`` seconds (new versions
    and models load, removed ones unload, changed files and settings reload). Default ``none``,
    as Triton: the API has no authentication, and anyone who can reach the port could unload
    a model; choose ``poll`` or ``explicit`` where the network is trusted."""

    repository_poll_s: float = Field(15.0, gt=0.0, le=86_400.0)
    """With ``model_control_mode=poll``: seconds between two reads of the repository (Triton's
    default 15 s; a read costs a few stat calls per version)."""

    host: str = "0.0.0.0"
    """Address to listen on."""

    port: int = Field(8000, ge=1, le=65535)
    """TCP port for HTTP (KServe v2 REST and /metrics)."""

    grpc_port: int | None = Field(8001, ge=1, le=65535)
    """TCP port for gRPC (Triton's ``inference.GRPCInferenceService``, the KServe v2 gRPC
    protocol, ``grpc.health.v1`` and reflection), 8001 as Triton's; ``none`` serves no gRPC. With
    several ``workers`` every worker serves it on this one port (SO_REUSEPORT)."""

    grpc_max_concurrent_streams: int = Field(256, ge=1, le=65536)
    """gRPC: most calls open at once on one client connection (HTTP/2 streams), unary calls and
    ``ModelStreamInfer`` streams alike; a client past it waits for one to end. The largest message
    is ``max_request_bytes`` (RESOURCE_EXHAUSTED past it)."""

    workers: int = Field(1, ge=1, le=64)
    """HTTP processes, each a uvicorn server. With 1 everything runs in one process. With 2 or
    more, the supervisor accepts every connection and hands it to the worker with the fewest
    (32 connections split 16/16), HTTP parsing, decoding and encoding spread over the workers (one
    event loop and one GIL each) while, with ``engine=shared``, one engine process owns every
    ONNX Runtime session and batcher, so batches form across all workers."""

    engine: Literal["shared", "per_worker"] = "shared"
    """With ``workers`` >= 2: ``shared`` runs one engine process behind every HTTP worker (global
    batching, one copy of each model, HTTP processes never load ONNX Runtime); ``per_worker``
    gives each worker its own sessions and batchers (independent copies, as ``uvicorn
    --workers`` would)."""

    max_batch_size: int = Field(32, ge=1, le=4096)
    """Most sequences one ONNX Runtime call receives."""

    max_queue_delay_ms: float = Field(0.0, ge=0.0, le=10_000.0)
    """Longest a request waits for others to join its batch while a runtime slot is free,
    counted from the arrival of the oldest waiting request. Batches grow anyway while every
    slot is busy, so 0 (Triton's default too) means: a batch goes whenever a slot frees, with
    everything queued by then. It only matters with several batches in flight (the shared
    engine) or ``dispatch_when_idle=false``. Shared engine, 2 cores, 32 clients, alternated pairs
    against 2 ms (``python -m bench.ab --a '{"workers": 2, "max_queue_delay_ms": 2}' --b
    '{"workers": 2}'``): 1.13x the throughput on fixed-length requests, 1.05x on the uniform
    length mix, CPU per request unchanged: with 2 ms, the second slot sat idle waiting for
    company while requests were on their way back from the first batch's clients."""

    dispatch_when_idle: bool = True
    """Dispatch at once when no batch is in flight, so a lone client pays no batching delay
    while batches still grow under load."""

    max_length_ratio: float = Field(8.0, ge=1.0)
    """No batch mixes sequences whose lengths differ by more than this factor (longest /
    shortest): a short request is never padded to, and kept waiting for, one many times longer
    (a 5-step request batched with a 31,250-step upload waited 1.3-1.8 s for it). The one left
    out takes the next batch. Less padding is less work: 32 clients, median of three alternated
    pairs against no cap (``python -m bench.ab --b '{"max_length_ratio": 1e6}' --mix ...``):
    1.26x the throughput on the long-tailed length mix, 1.03x on the uniform one; 4 and 2 gain
    a little more on the long tail (1.19x, 1.26x over 8) but cost the uniform mix (4: 0.91x,
    p99 1.3x)."""

    max_queue_size: int = Field(256, ge=1)
    """Most sequences waiting per model version; past it requests are refused with 503 and
    Retry-After before their body is decoded."""

    max_batches_in_flight: int | None = Field(None, ge=1, le=64)
    """ONNX Runtime calls running at once per model version (each on a worker thread). Unset:
    1 in one process or per worker, 2 in a shared engine (whose event loop does no HTTP work,
    so two batches keep both cores on inference). One process, measured (bench/results, 2 shared cores, 32 clients, v2 JSON, same run, A/B twice):
    1 in flight served 1474-1519 seq/s against 1014-1074 with 2 (and 1079 with 3); with 2 the
    process used only 1.1 cores against 1.47, the event loop starved while two ORT calls held
    both cores. The queue fills while the one batch runs, so batches stay as large (16 vs 14-15)."""

    sequence_idle_timeout_s: float = Field(60.0, gt=0.0)
    """Server-kept streaming: a sequence with no chunk for this long (counted from the end of its
    last chunk, never while one is queued or running) is evicted, and its id answers 409."""

    max_live_sequences: int = Field(1024, ge=1)
    """Server-kept streaming: most sequences whose state is kept at once (a few KB each); a new
    sequence past it gets 503 with Retry-After."""

    max_sequence_length: int = Field(4096, ge=1)
    """Longest time axis accepted in a request (400 past it)."""

    max_request_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Largest request body accepted (413 past it)."""

    request_timeout_s: float = Field(30.0, gt=0.0)
    """A request not answered in this time gets 504; its rows are dropped from the queue."""

    drain_timeout_s: float = Field(20.0, ge=0.0)
    """On SIGTERM: readiness turns false at once, queued and in-flight work is answered, and
    the process exits within this time. Keep the pod's terminationGracePeriodSeconds above
    preStop + this value."""

    # --- hostile and careless clients (issue 15: app/http/guard.py, app/http/connections.py, app/http/auth.py)
    body_timeout_s: float = Field(15.0, gt=0.0)
    """Longest a client may take to send a whole request, headers and body, counted from its
    first byte. Past it the request gets 408 and its connection is closed, so a stalled upload
    holds nothing for long. 15 s carries a 16 MB body (``max_request_bytes``) at 9 Mbit/s."""

    keep_alive_timeout_s: float = Field(5.0, gt=0.0)
    """An idle connection (no request yet, or none since the last answer) is closed after this
    time. Behind a load balancer that reuses connections, keep it above the balancer's idle
    timeout, or the balancer may send a request on a connection the server is closing."""

    max_connections: int = Field(1024, ge=1)
    """Most open connections at once, across all HTTP workers; past it a new connection's request
    gets 503 with Retry-After and the connection is closed. Each held connection costs at most about 64 KiB
    of buffered body, so the default bounds that at 64 MiB."""

    api_key: SecretStr | None = None
    """Bearer token clients must send (``Authorization: Bearer <token>``) to every ``/v2``
    endpoint except ``/v2/health/live`` and ``/v2/health/ready``; ``/metrics`` stays open. Unset
    (and no ``api_key_file``): no authentication. Prefer ``api_key_file`` in Kubernetes."""

    api_key_file: Path | None = None
    """File holding the bearer token (surrounding whitespace ignored), e.g. a Kubernetes Secret
    mounted as a volume; read once at start. Exclusive with ``api_key``."""

    providers: Literal["auto", "cuda", "cpu"] = "auto"
    """Execution provider: ``auto`` takes CUDA when onnxruntime-gpu sees a GPU, else CPU;
    ``cuda`` fails at start without one; ``cpu`` never uses a GPU."""

    intra_op_threads: int | None = Field(None, ge=0)
    """ONNX Runtime intra-op threads per session (0 = ONNX Runtime's default, one per core of
    the *node*, which in a container can be far more than the pod may use: set it to the pod's
    CPU request). Unset: 2 in one process, 1 with several workers (parallelism then comes from
    batches in flight or from the workers). In one process two, without spinning, measured best once the HTTP path was made lean
    (bench/results, 2 cores, 32 clients, v2 JSON, three runs: 1960, 1519-1904 and 2046 seq/s
    against 1388, 1721 and 1523 with one thread, at equal CPU per request: 0.72-0.93 against
    0.70-0.86 ms). Before that, when FastAPI's router took a fifth of the CPU, one thread won
    (1479 against 1385 seq/s)."""

    small_batch_max_size: int = Field(1, ge=0, le=4096)
    """Batches of at most this many sequences run on a second, one-thread session of the same
    model when a CPU session has more than one intra-op thread: for a small batch the hand-off
    between threads at every time step costs more than it saves (batch 1, 2 cores, no spinning:
    2.08 ms at two threads against 1.13-1.30 ms at one). One process, lone client, five
    alternated A/B pairs: p50 2.66-3.29 against 3.33-4.37 ms, 2.6-3.3 against 4.2-5.2 CPU-ms a
    request; 4 and 32 clients unchanged within the noise. 0: one session (half the model
    memory). Not used on CUDA."""

    allow_spinning: bool = False
    """ONNX Runtime ``session.intra_op.allow_spinning``: spinning burns CPU the event loop needs
    (2.6 against 1.7 CPU-ms per request for a lone client, 1.06 against 0.73 at 32 clients,
    for no more throughput)."""

    cpu_mem_arena: bool = False
    """ONNX Runtime's CPU memory arena keeps the largest batch shape's memory forever; off, RSS
    stays bounded under a long-tailed length mix at a small cost."""

    warmup: bool = True
    """Run each model once at several batch sizes before reporting ready."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Level of the JSON log lines (one per request at info)."""

    access_log: bool = True
    """Write one structured JSON line per inference request."""

    gzip_min_bytes: int = Field(1024, ge=0)
    """Answers at least this long are gzip-compressed for clients that send
    ``Accept-Encoding: gzip``; shorter ones cost more CPU to compress than they save."""

    @model_validator(mode="before")
    @classmethod
    def _none_unsets(cls, data: object) -> object:
        """``none`` (any case) unsets every setting that can be unset."""
        if isinstance(data, dict):
            for name, f in cls.model_fields.items():
                value = data.get(name)
                if isinstance(value, str) and value.strip().lower() == NONE and (f.default is None or _optional(f.annotation)):
                    data[name] = None
        return data

    @field_validator("model_repository", mode="before")
    @classmethod
    def _default_repository(cls, value: object) -> object:
        return SHIPPED_REPOSITORY if value is None else value

    @property
    def shared_engine(self) -> bool:
        """Whether an engine process serves several HTTP workers."""
        return self.workers > 1 and self.engine == "shared"

    @property
    def batches_in_flight(self) -> int:
        """``max_batches_in_flight``, or its default for this process layout."""
        if self.max_batches_in_flight is not None:
            return self.max_batches_in_flight
        return 2 if self.shared_engine else 1

    @property
    def ort_threads(self) -> int:
        """``intra_op_threads``, or its default for this process layout."""
        if self.intra_op_threads is not None:
            return self.intra_op_threads
        return 2 if self.workers == 1 else 1

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_queue_size < self.max_batch_size:
            raise ValueError(
                f"max_queue_size ({self.max_queue_size}) must be >= max_batch_size ({self.max_batch_size})"
            )
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("set api_key or api_key_file, not both")
        if self.model_control_mode == "explicit" and self.workers > 1 and self.engine == "per_worker":
            raise ValueError(
                "model_control_mode=explicit needs engine=shared (or workers=1): with engine=per_worker "
                "a load call would reach one worker's models only; use model_control_mode=poll"
            )
        return self


def _optional(annotation: object) -> bool:
    return type(None) in get_args(annotation)
