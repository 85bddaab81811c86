"""The artifact contract between the exporter (``export/``) and the server (``app/``).

This module is the single definition of what an lstm-serve ONNX artifact looks like. The
exporter writes graphs that satisfy it; the server reads graphs through it. Neither side
spells a tensor name or a metadata key anywhere else. It imports only the standard library
and numpy, so both the training side (torch) and the serving side (no torch) can use it.

Why the graph is *padding-aware*: a server that pads sequences of different lengths into one
batch must get, for every row, exactly what that row alone would give. A plain exported LSTM
runs every row to the padded length, so its final state and (for bidirectional models) every
output are wrong for the short rows. Feeding ``sequence_lens`` into every ONNX ``LSTM`` node
makes the recurrence stop at each row's own length, and reading the last *valid* step makes
many-to-one outputs exact (measured: 3e-2 error without, 1.5e-8 with, on a 3-layer
bidirectional model).

The graph, for a model with ``L`` layers, hidden size ``H``, ``F`` features, ``O`` outputs:

inputs
    ``input``          float32 [batch, time, F]   right-padded rows (padding values are ignored)
    ``sequence_lens``  int32   [batch]            each row's valid length, 1 <= len <= time
    ``initial_h``      float32 [L, batch, H]      unidirectional models only (zeros = fresh start)
    ``initial_c``      float32 [L, batch, H]      unidirectional models only
outputs
    ``output``         float32 [batch, O]          many_to_one: the head at the last valid step
                       float32 [batch, time, O]    many_to_many: zero past each row's length
    ``final_h``        float32 [L, batch, H]       unidirectional only: state after the last
    ``final_c``        float32 [L, batch, H]       valid step of each row (for streaming)

``batch`` and ``time`` are dynamic axes. Running a sequence in two chunks, feeding the first
chunk's ``final_h``/``final_c`` as the second's ``initial_h``/``initial_c``, equals running it
whole; that is what stateful streaming builds on.

The model's description travels inside the ONNX file as ``metadata_props`` (string values), so
the artifact is self-describing: see :class:`ModelSpec`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

CONTRACT_VERSION = "1"

# Tensor names.
INPUT = "input"
SEQUENCE_LENS = "sequence_lens"
INITIAL_H = "initial_h"
INITIAL_C = "initial_c"
OUTPUT = "output"
FINAL_H = "final_h"
FINAL_C = "final_c"

# Data types as the graph declares them (numpy) and as the Open Inference Protocol names them.
INPUT_DTYPE = np.dtype(np.float32)
LENGTHS_DTYPE = np.dtype(np.int32)
STATE_DTYPE = np.dtype(np.float32)
OUTPUT_DTYPE = np.dtype(np.float32)

MANY_TO_ONE = "many_to_one"
MANY_TO_MANY = "many_to_many"
TASKS = (MANY_TO_ONE, MANY_TO_MANY)
Task = Literal["many_to_one", "many_to_many"]

# Keys of the ONNX metadata_props the exporter writes and the server reads.
META_CONTRACT_VERSION = "lstm_serve.contract_version"
META_TASK = "task"
META_INPUT_SIZE = "input_size"
META_HIDDEN_SIZE = "hidden_size"
META_NUM_LAYERS = "num_layers"
META_BIDIRECTIONAL = "bidirectional"
META_OUTPUT_SIZE = "output_size"
META_FEATURE_NAMES = "feature_names"  # JSON list of strings, optional
META_PRECISION = "precision"  # fp32 | fp16 | int8
META_EXPORTER_VERSION = "exporter_version"
META_TORCH_VERSION = "torch_version"
META_ONNX_VERSION = "onnx_version"
META_WEIGHTS_SHA256 = "weights_sha256"
META_NORMALIZATION = "normalization"  # JSON {"mean": [...], "std": [...]}, optional, baked in

PRECISIONS = ("fp32", "fp16", "int8")


class ContractError(ValueError):
    """An artifact or a tensor does not satisfy the contract; the message names what."""


@dataclass(frozen=True)
class ModelSpec:
    """What a client and the server need to know about an exported stacked LSTM.

    Built by the exporter from the PyTorch model and stored as ONNX metadata; rebuilt by the
    server from that metadata with :meth:`from_metadata`, so a model in the repository needs
    no side configuration.
    """

    task: Task
    input_size: int
    hidden_size: int
    num_layers: int
    output_size: int
    bidirectional: bool = False
    precision: str = "fp32"
    feature_names: tuple[str, ...] | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ContractError(f"task must be one of {TASKS}, got {self.task!r}")
        for name in ("input_size", "hidden_size", "num_layers", "output_size"):
            if int(getattr(self, name)) < 1:
                raise ContractError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.precision not in PRECISIONS:
            raise ContractError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.feature_names is not None and len(self.feature_names) != self.input_size:
            raise ContractError(
                f"feature_names has {len(self.feature_names)} names for input_size {self.input_size}"
            )

    @property
    def stateful(self) -> bool:
        """Whether the graph carries LSTM state in and out (unidirectional models only).

        A bidirectional layer's backward direction starts at the *end* of the sequence, so a
        chunk's state cannot be carried into the next chunk: such models are not streamable.
        """
        return not self.bidirectional

    @property
    def input_names(self) -> tuple[str, ...]:
        if self.stateful:
            return (INPUT, SEQUENCE_LENS, INITIAL_H, INITIAL_C)
        return (INPUT, SEQUENCE_LENS)

    @functools.cached_property  # read for every request (the outputs it may ask for)
    def output_names(self) -> tuple[str, ...]:
        if self.stateful:
            return (OUTPUT, FINAL_H, FINAL_C)
        return (OUTPUT,)

    def input_shapes(self) -> dict[str, list[int]]:
        """Declared shapes, with -1 for the dynamic batch and time axes."""
        shapes = {INPUT: [-1, -1, self.input_size], SEQUENCE_LENS: [-1]}
        if self.stateful:
            shapes[INITIAL_H] = [self.num_layers, -1, self.hidden_size]
            shapes[INITIAL_C] = [self.num_layers, -1, self.hidden_size]
        return shapes

    def output_shapes(self) -> dict[str, list[int]]:
        out = [-1, self.output_size] if self.task == MANY_TO_ONE else [-1, -1, self.output_size]
        shapes = {OUTPUT: out}
        if self.stateful:
            shapes[FINAL_H] = [self.num_layers, -1, self.hidden_size]
            shapes[FINAL_C] = [self.num_layers, -1, self.hidden_size]
        return shapes

    def zero_state(self, batch: int) -> np.ndarray:
        """A fresh LSTM state for ``batch`` rows: what ``initial_h``/``initial_c`` get by default."""
        return np.zeros((self.num_layers, batch, self.hidden_size), dtype=STATE_DTYPE)

    def to_metadata(self) -> dict[str, str]:
        """The ONNX ``metadata_props`` the exporter writes (``extra`` entries included)."""
        meta = dict(self.extra)
        meta.update(
            {
                META_CONTRACT_VERSION: CONTRACT_VERSION,
                META_TASK: self.task,
                META_INPUT_SIZE: str(self.input_size),
                META_HIDDEN_SIZE: str(self.hidden_size),
                META_NUM_LAYERS: str(self.num_layers),
                META_BIDIRECTIONAL: "true" if self.bidirectional else "false",
                META_OUTPUT_SIZE: str(self.output_size),
                META_PRECISION: self.precision,
            }
        )
        if self.feature_names is not None:
            meta[META_FEATURE_NAMES] = json.dumps(list(self.feature_names))
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> ModelSpec:
        """Rebuild the spec from an artifact's ``metadata_props``; refuses a foreign artifact."""
        version = meta.get(META_CONTRACT_VERSION)
        if version != CONTRACT_VERSION:
            raise ContractError(
                f"artifact has contract version {version!r}, this build reads {CONTRACT_VERSION!r}; "
                "re-export it with this version of lstm-export"
            )
        known = {
            META_CONTRACT_VERSION, META_TASK, META_INPUT_SIZE, META_HIDDEN_SIZE, META_NUM_LAYERS,
            META_BIDIRECTIONAL, META_OUTPUT_SIZE, META_PRECISION, META_FEATURE_NAMES,
        }
        try:
            names = meta.get(META_FEATURE_NAMES)
            return cls(
                task=meta[META_TASK],  # type: ignore[arg-type]
                input_size=int(meta[META_INPUT_SIZE]),
                hidden_size=int(meta[META_HIDDEN_SIZE]),
                num_layers=int(meta[META_NUM_LAYERS]),
                output_size=int(meta[META_OUTPUT_SIZE]),
                bidirectional=meta[META_BIDIRECTIONAL].lower() == "true",
                precision=meta.get(META_PRECISION, "fp32"),
                feature_names=tuple(json.loads(names)) if names else None,
                extra={k: v for k, v in meta.items() if k not in known},
            )
        except KeyError as exc:
            raise ContractError(f"artifact metadata lacks {exc.args[0]!r}") from None
        except ValueError as exc:
            raise ContractError(f"artifact metadata is invalid: {exc}") from None

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (model cards, the server's model metadata parameters)."""
        d = asdict(self)
        d.pop("extra")
        d["stateful"] = self.stateful
        return d


@functools.lru_cache(maxsize=1024)
def full_lengths(batch: int, time: int) -> np.ndarray:
    """``sequence_lens`` when none is given: every row valid to its last step. Read-only, one
    array per (batch, time) shared by every caller: a request in the common shape pays a cache
    lookup, not ``np.full``'s Python wrapper and dispatch (~1 us of the event loop)."""
    lengths = np.full(batch, time, LENGTHS_DTYPE)
    lengths.flags.writeable = False
    return lengths


def feeds(
    spec: ModelSpec,
    x: np.ndarray,
    lengths: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    initial_c: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The graph's feeds for rows ``x`` [batch, time, features]: full lengths and a fresh state
    unless given. Everything that runs an artifact outside the server (verification, tests,
    benchmarks) builds its feeds here; the server pads several requests (``app.engine.padding``)."""
    batch, time = x.shape[0], x.shape[1]
    out = {
        INPUT: np.asarray(x, dtype=INPUT_DTYPE),
        SEQUENCE_LENS: full_lengths(batch, time) if lengths is None else np.asarray(lengths, LENGTHS_DTYPE),
    }
    if spec.stateful:
        out[INITIAL_H] = spec.zero_state(batch) if initial_h is None else np.asarray(initial_h, STATE_DTYPE)
        out[INITIAL_C] = spec.zero_state(batch) if initial_c is None else np.asarray(initial_c, STATE_DTYPE)
    return out


def check_lengths(lengths: np.ndarray, time: int) -> None:
    """Refuse lengths the graph would silently get wrong.

    A row of length 0 yields garbage and a length past the padded time axis reads memory that
    is not the row's, so every length must satisfy ``1 <= length <= time``.
    """
    if lengths.ndim != 1:
        raise ContractError(f"{SEQUENCE_LENS} must be 1-D, got shape {list(lengths.shape)}")
    if lengths.size and (lengths.min() < 1 or lengths.max() > time):
        raise ContractError(
            f"{SEQUENCE_LENS} values must be between 1 and the time length {time}, "
            f"got min {int(lengths.min())} and max {int(lengths.max())}"
        )

