"""The model family the exporter understands: one ``nn.LSTM`` (stacked, optionally bidirectional)
followed by a head that acts on each time step alone.

``StackedLSTM`` is what users train. A user with their own module that holds an ``nn.LSTM`` and a
head has two ways in:

* give the module attributes ``lstm`` (an ``nn.LSTM``) and ``head`` (see below) and, optionally,
  ``task``; :func:`export.export_model` accepts it as it is, or
* wrap the parts: ``StackedLSTM.from_modules(lstm, head, task=...)`` (shares the parameters).

A head must act on each time step by itself: ``nn.Linear``, or an ``nn.Sequential`` of
``nn.Linear`` and element-wise layers (see :data:`POINTWISE_LAYERS`). Anything else is refused
with :class:`UnsupportedModelError`, because the exporter cannot prove it exact.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from app.contract import MANY_TO_MANY, MANY_TO_ONE, TASKS

from .errors import UnsupportedModelError

# Element-wise layers a head may contain besides nn.Linear; each maps to one ONNX op.
POINTWISE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.LeakyReLU,
    nn.ELU,
    nn.SiLU,
    nn.Dropout,
    nn.Identity,
)
_RECURRENT_OTHER = (nn.GRU, nn.RNN, nn.RNNCell, nn.LSTMCell, nn.GRUCell)

State = tuple[torch.Tensor, torch.Tensor]


class StackedLSTM(nn.Module):
    """A stacked LSTM (``batch_first``) plus a per-step head.

    ``many_to_one`` applies the head to each row's last *valid* step (for bidirectional models
    that step's output holds both directions); ``many_to_many`` applies it to every step and
    zeroes the steps past each row's length.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        output_size: int,
        dropout: float = 0.0,
        bidirectional: bool = False,
        task: str = MANY_TO_ONE,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.lstm = nn.LSTM(
            input_size,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        self.head: nn.Module = nn.Linear(hidden_size * (2 if bidirectional else 1), output_size)
        self._dropout = float(dropout)

    @classmethod
    def from_modules(cls, lstm: nn.LSTM, head: nn.Module, task: str = MANY_TO_ONE) -> StackedLSTM:
        """Wrap an existing ``nn.LSTM`` and head (parameters shared, not copied).

        Raises :class:`UnsupportedModelError` for configurations that cannot be exported exactly.
        """
        check_lstm(lstm)
        check_head(head, lstm.hidden_size * (2 if lstm.bidirectional else 1))
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        model.task = task
        model.lstm = lstm
        model.head = head
        model._dropout = float(lstm.dropout)
        return model

    # --- description -----------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        return self.lstm.input_size

    @property
    def hidden_size(self) -> int:
        return self.lstm.hidden_size

    @property
    def num_layers(self) -> int:
        return self.lstm.num_layers

    @property
    def bidirectional(self) -> bool:
        return bool(self.lstm.bidirectional)

    @property
    def num_directions(self) -> int:
        return 2 if self.lstm.bidirectional else 1

    @property
    def output_size(self) -> int:
        return check_head(self.head, self.hidden_size * self.num_directions)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments: ``StackedLSTM(**model.config)`` rebuilds the architecture."""
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "output_size": self.output_size,
            "dropout": self._dropout,
            "bidirectional": self.bidirectional,
            "task": self.task,
        }

    def save_checkpoint(self, path: str | Any) -> None:
        """Save ``{"config": ..., "state_dict": ...}``, the format ``lstm-export export`` reads
        with ``torch.load(weights_only=True)`` (no pickled code)."""
        torch.save({"config": self.config, "state_dict": self.state_dict()}, path)

    # --- computation -----------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None = None,
        state: State | None = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, State]:
        """Run right-padded ``x`` [batch, time, features].

        ``lengths`` (int, [batch]) are the valid lengths; ``None`` means every row is full.
        ``state`` is ``(h, c)``, each [layers * directions, batch, hidden]. With
        ``return_state`` the result is ``(output, (h, c))``, the state after each row's last
        valid step.
        """
        batch, time = x.shape[0], x.shape[1]
        if not self.lstm.batch_first:
            x_in = x.transpose(0, 1)
        else:
            x_in = x
        if lengths is None:
            seq, (h, c) = self.lstm(x_in, state)
            if not self.lstm.batch_first:
                seq = seq.transpose(0, 1)
            lengths_t = torch.full((batch,), time, dtype=torch.long, device=x.device)
        else:
            lengths_t = torch.as_tensor(lengths, device=x.device).long()
            packed = pack_padded_sequence(
                x_in, lengths_t.cpu(), batch_first=self.lstm.batch_first, enforce_sorted=False
            )
            seq_packed, (h, c) = self.lstm(packed, state)
            seq, _ = pad_packed_sequence(seq_packed, batch_first=True, total_length=time)
        if self.task == MANY_TO_ONE:
            last = seq[torch.arange(batch, device=x.device), lengths_t - 1]
            out = self.head(last)
        else:
            out = self.head(seq)
            valid = torch.arange(time, device=x.device)[None, :] < lengths_t[:, None]
            out = out * valid[..., None].to(out.dtype)
        if return_state:
            return out, (h, c)
        return out


# --- validation of foreign modules ---------------------------------------------------------


def check_lstm(lstm: Any) -> None:
    """Refuse an LSTM the exporter cannot reproduce exactly, saying what to do instead."""
    if isinstance(lstm, _RECURRENT_OTHER):
        raise UnsupportedModelError(
            f"{type(lstm).__name__} is not supported: lstm-serve exports nn.LSTM only. "
            "Train with nn.LSTM (StackedLSTM), or export this model with torch.onnx yourself "
            "and serve it elsewhere."
        )
    if not isinstance(lstm, nn.LSTM):
        raise UnsupportedModelError(
            f"expected an nn.LSTM, got {type(lstm).__name__}. Hand over the nn.LSTM module itself "
            "(StackedLSTM.from_modules(lstm, head, task=...))."
        )
    if getattr(lstm, "proj_size", 0):
        raise UnsupportedModelError(
            f"nn.LSTM with proj_size={lstm.proj_size} cannot be served: ONNX Runtime does not load "
            "projected LSTMs. Retrain with proj_size=0 (add an nn.Linear head for the projection)."
        )


def check_head(head: Any, in_features: int) -> int:
    """Check that ``head`` acts on each step alone; return its output size."""
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    width = in_features
    linear_seen = False
    for layer in layers:
        if isinstance(layer, nn.Linear):
            if layer.in_features != width:
                raise UnsupportedModelError(
                    f"head layer {layer} expects {layer.in_features} features but receives {width} "
                    "(hidden_size x directions of the LSTM, or the previous Linear's output)"
                )
            width = layer.out_features
            linear_seen = True
        elif isinstance(layer, POINTWISE_LAYERS):
            continue
        elif isinstance(layer, _RECURRENT_OTHER + (nn.LSTM,)):
            raise UnsupportedModelError(
                f"head contains a recurrent layer ({type(layer).__name__}); only one nn.LSTM "
                "(stack its layers with num_layers) followed by a per-step head is supported"
            )
        else:
            raise UnsupportedModelError(
                f"head layer {type(layer).__name__} is not supported: the head must act on each "
                "time step alone (nn.Linear, or nn.Sequential of nn.Linear and "
                f"{', '.join(c.__name__ for c in POINTWISE_LAYERS)}). A head that mixes time "
                "steps (convolution, attention, pooling) cannot be exported exactly; apply it "
                "outside the served model."
            )
    if not linear_seen:
        raise UnsupportedModelError(
            "head has no nn.Linear: add one that maps the LSTM features to the outputs"
        )
    return width


def as_stacked_lstm(model: Any, task: str | None = None) -> StackedLSTM:
    """Accept a StackedLSTM, or any module with ``.lstm`` and ``.head``; refuse the rest."""
    if isinstance(model, StackedLSTM):
        check_lstm(model.lstm)
        check_head(model.head, model.hidden_size * model.num_directions)
        if task is not None and task != model.task:
            raise ValueError(f"task {task!r} given, but the model's task is {model.task!r}")
        return model
    if isinstance(model, tuple) and len(model) == 2:
        lstm, head = model
        return StackedLSTM.from_modules(lstm, head, task=task or MANY_TO_ONE)
    if isinstance(model, _RECURRENT_OTHER):
        check_lstm(model)
    if isinstance(model, nn.Module) and hasattr(model, "lstm") and hasattr(model, "head"):
        extra = [
            n for n, m in model.named_children() if n not in ("lstm", "head")
            and any(True for _ in m.parameters())
        ]
        if extra:
            raise UnsupportedModelError(
                f"{type(model).__name__} has parameters outside .lstm and .head ({', '.join(extra)}): "
                "the exporter would drop them. Fold them into the head, or export "
                "StackedLSTM.from_modules(lstm, head, task=...) if they are not needed for inference."
            )
        return StackedLSTM.from_modules(
            model.lstm, model.head, task=task or getattr(model, "task", None) or MANY_TO_ONE
        )
    recurrent = [type(m).__name__ for m in getattr(model, "modules", lambda: [])()
                 if isinstance(m, _RECURRENT_OTHER)]
    if recurrent:
        raise UnsupportedModelError(
            f"{type(model).__name__} contains {', '.join(sorted(set(recurrent)))}: lstm-serve "
            "exports nn.LSTM only. Retrain with nn.LSTM (StackedLSTM)."
        )
    raise UnsupportedModelError(
        f"cannot export {type(model).__name__}: pass a StackedLSTM, a module with attributes "
        "`lstm` (nn.LSTM) and `head` (per-step nn.Linear/nn.Sequential), or the pair (lstm, head) "
        "with task=... ; StackedLSTM.from_modules(lstm, head, task=...) wraps existing parts."
    )


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the state dict: each tensor's name, dtype, shape and float32 bytes, sorted by name.

    Independent of how the weights were saved (pickled module or state dict).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        arr = np.ascontiguousarray(tensor.detach().cpu().numpy())
        digest.update(name.encode())
        digest.update(str(arr.dtype).encode())
        digest.update(str(list(arr.shape)).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


__all__ = [
    "MANY_TO_MANY",
    "MANY_TO_ONE",
    "POINTWISE_LAYERS",
    "StackedLSTM",
    "as_stacked_lstm",
    "check_head",
    "check_lstm",
    "weights_sha256",
]
