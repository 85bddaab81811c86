"""Helpers for tests (the server's too): tiny real models, exported and verified, in a repository.

    from export.testing import make_model
    path = make_model(tmp_path, "tiny", num_layers=2, bidirectional=False, task="many_to_one")

Needs torch (the ``export`` extra); a server test module should ``pytest.importorskip("torch")``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .exporter import export_model
from .model import StackedLSTM


def make_model(
    repository: str | os.PathLike[str],
    name: str,
    *,
    num_layers: int = 1,
    hidden_size: int = 8,
    input_size: int = 3,
    output_size: int = 2,
    bidirectional: bool = False,
    task: str = "many_to_one",
    seed: int = 0,
    version: int | None = None,
    precision: str = "fp32",
    **options: Any,
) -> Path:
    """Export a random-weight StackedLSTM (seeded, verified, no latency measurement by default)
    to ``repository/name/version/model.onnx`` and return that path."""
    torch.manual_seed(seed)
    model = StackedLSTM(input_size, hidden_size, num_layers, output_size,
                        bidirectional=bidirectional, task=task)
    options.setdefault("card_latency", False)
    return export_model(model, repository, name, version, precision=precision, **options)


_ORT_TYPES = {"float32": "tensor(float)", "int32": "tensor(int32)"}


def check_artifact(path: str | os.PathLike[str]) -> Any:
    """Load ``path`` in ONNX Runtime (CPU) and assert it satisfies the contract: the spec rebuilds
    from its metadata and its inputs/outputs have exactly the spec's names, dtypes and shapes
    (-1 for dynamic axes). Returns the :class:`app.contract.ModelSpec`."""
    import onnxruntime as ort

    from app import contract as C

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = C.ModelSpec.from_metadata(dict(sess.get_modelmeta().custom_metadata_map))
    dtypes = {C.INPUT: C.INPUT_DTYPE, C.SEQUENCE_LENS: C.LENGTHS_DTYPE, C.INITIAL_H: C.STATE_DTYPE,
              C.INITIAL_C: C.STATE_DTYPE, C.OUTPUT: C.OUTPUT_DTYPE, C.FINAL_H: C.STATE_DTYPE,
              C.FINAL_C: C.STATE_DTYPE}
    for args, names, shapes in ((sess.get_inputs(), spec.input_names, spec.input_shapes()),
                                (sess.get_outputs(), spec.output_names, spec.output_shapes())):
        assert tuple(a.name for a in args) == names, (tuple(a.name for a in args), names)
        for arg in args:
            got = [d if isinstance(d, int) else -1 for d in arg.shape]
            assert got == shapes[arg.name], (arg.name, arg.shape, shapes[arg.name])
            assert arg.type == _ORT_TYPES[str(dtypes[arg.name])], (arg.name, arg.type)
    return spec
