"""Reading checkpoints written by ``torch.save`` into a :class:`StackedLSTM`.

Accepted, most to least recommended:

1. ``{"config": {...StackedLSTM kwargs...}, "state_dict": {...}}`` (``StackedLSTM.save_checkpoint``);
   ``"model_state_dict"`` is accepted for ``"state_dict"``. Read with ``weights_only=True``.
2. A bare state dict of a StackedLSTM (keys ``lstm.*`` and ``head.weight``/``head.bias``). The
   architecture is read off the tensor shapes; ``task`` (not visible in weights) comes from the
   config or defaults to many_to_one. Read with ``weights_only=True``.
3. A whole pickled module (``torch.save(model)``): a StackedLSTM or a module with ``.lstm`` and
   ``.head``. Unpickling runs code from the file, so it needs ``allow_pickle=True``
   (``--allow-pickle``), and the module's class must be importable.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .model import StackedLSTM, as_stacked_lstm

_CONFIG_KEYS = ("input_size", "hidden_size", "num_layers", "output_size", "dropout",
                "bidirectional", "task")


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """StackedLSTM constructor arguments read off a state dict's shapes (task excluded)."""
    try:
        w0 = state_dict["lstm.weight_ih_l0"]
        head_w = state_dict["head.weight"]
    except KeyError as exc:
        heads = sorted(k for k in state_dict if k.startswith("head."))
        hint = (f" (found {', '.join(heads[:4])}: a multi-layer head cannot be rebuilt from weights; "
                "save the whole module and use --allow-pickle, or use export_model() in Python)"
                if heads else "")
        raise CheckpointError(
            f"state dict lacks {exc.args[0]!r}: expected a StackedLSTM state dict with keys "
            f"lstm.weight_ih_l0, ..., head.weight{hint}"
        ) from None
    layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"lstm\.weight_ih_l(\d+)$", k))}
    if any(k.startswith("lstm.weight_hr_l") for k in state_dict):
        from .errors import UnsupportedModelError

        raise UnsupportedModelError(
            "checkpoint has an LSTM with proj_size > 0 (weight_hr_l*): ONNX Runtime does not load "
            "projected LSTMs; retrain with proj_size=0"
        )
    return {
        "input_size": int(w0.shape[1]),
        "hidden_size": int(w0.shape[0]) // 4,
        "num_layers": max(layers) + 1,
        "output_size": int(head_w.shape[0]),
        "bidirectional": "lstm.weight_ih_l0_reverse" in state_dict,
    }


def load_checkpoint(path: str | os.PathLike[str], config: Mapping[str, Any] | None = None,
                    *, allow_pickle: bool = False) -> StackedLSTM:
    """Load a checkpoint (see module doc) as an eval-mode StackedLSTM on the CPU.

    ``config`` (StackedLSTM kwargs) overrides what the file says or what the shapes imply.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p} (check the path)")
    if p.is_dir():
        raise CheckpointError(f"checkpoint path {p} is a directory; give the file torch.save wrote")
    overrides = dict(config or {})
    unknown = set(overrides) - set(_CONFIG_KEYS)
    if unknown:
        raise CheckpointError(f"unknown config keys {sorted(unknown)}; allowed: {list(_CONFIG_KEYS)}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # not a pickled class: a corrupt or foreign file
            raise CheckpointError(f"could not read {p} as a torch.save file: {exc}") from None
        if not allow_pickle:
            raise CheckpointError(
                f"{p} holds a pickled Python object (e.g. torch.save(model)); loading it runs code "
                "from the file. Pass --allow-pickle (allow_pickle=True) if you trust it, or save "
                "{'config': model.config, 'state_dict': model.state_dict()} instead"
            ) from None
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - any unpickling failure is the user's file
            raise CheckpointError(
                f"could not unpickle {p}: {exc2} (the module's class must be importable)"
            ) from None
    except Exception as exc:  # noqa: BLE001 - corrupt/truncated/not a torch file
        raise CheckpointError(f"could not read {p} as a torch.save file: {exc}") from None

    if isinstance(obj, nn.Module):
        model = as_stacked_lstm(obj, overrides.get("task"))
        return model.cpu().float().eval()
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p} holds a {type(obj).__name__}, not a model or a state dict")

    state = obj.get("state_dict", obj.get("model_state_dict"))
    file_config = obj.get("config", {}) if state is not None else {}
    if state is None:
        state = obj
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{p}: the state dict holds non-tensor values; expected model.state_dict()")
    cfg = {**infer_config(state), **{k: v for k, v in dict(file_config).items() if k in _CONFIG_KEYS},
           **overrides}
    try:
        model = StackedLSTM(**cfg)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{p} does not match the StackedLSTM config {cfg}: {exc}") from None
    return model.eval()
