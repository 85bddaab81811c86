"""What the engine queues and batches: sequences and the job that carries them.

The HTTP codec (``protocol``) decodes a request into these types and the engine never sees
the codec's own request type, so an engine in another process needs only these fields to
cross the boundary (``wire`` sends them as raw array bytes). ``padding`` merges the
``Sequences`` of several jobs into one model call.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sequences:
    """``n`` sequences padded to one time length ``t``, with their valid lengths and, for
    client-carried streaming, the LSTM state to start from."""

    x: np.ndarray  # float32 [n, t, features]
    lengths: np.ndarray  # int32 [n], 1 <= length <= t
    initial_h: np.ndarray | None = None  # float32 [layers, n, hidden]
    initial_c: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def t(self) -> int:
        return int(self.x.shape[1])

    @property
    def steps(self) -> int:
        """Valid time steps (the work really asked for)."""
        return int(self.lengths.sum())


@dataclass(frozen=True)
class StreamControl:
    """Server-kept state: which live sequence a chunk belongs to (Triton's ``sequence_id``,
    ``sequence_start``, ``sequence_end`` request parameters).

    ``5`` and ``"5"`` are different ids, as in Triton; ``0`` and ``""`` mean no sequence and
    never get here."""

    id: str | int
    start: bool = False
    end: bool = False

    @property
    def key(self) -> tuple[type, str | int]:
        return (type(self.id), self.id)

    @property
    def shown(self) -> str:
        """The id as the client sent it (a JSON string keeps its quotes), for error messages."""
        return json.dumps(self.id)


@dataclass(slots=True, eq=False)
class Job:
    """One request as the engine sees it: which model version, its sequences, the outputs it
    wants back (a subset of the model's output names) and, for server-kept state, its stream.

    Not frozen: one is built per request, and a frozen dataclass sets each field through
    ``object.__setattr__`` (1.27 us against 0.37 here); nothing changes a job once built."""

    model: str
    version: int
    sequences: Sequences
    outputs: tuple[str, ...]
    stream: StreamControl | None = None
    # When the job reached this process (an engine process builds its own Job), for Triton's
    # statistics: its queue time; not sent over the wire.
    arrival_ns: int = field(default_factory=time.perf_counter_ns)

    @property
    def size(self) -> int:
        """Sequences in the job: what it takes of a batch and of the queue."""
        return self.sequences.n

    @property
    def length(self) -> int:
        """Padded time steps: what batch selection matches on to cut padding."""
        return self.sequences.t
