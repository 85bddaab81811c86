"""Triton's model configuration extension: a served model described as Triton's ``ModelConfig``.

``GET /v2/models/{name}[/versions/{v}]/config`` is what Triton tooling reads first:
``perf_analyzer`` stops without it, and ``tritonclient``'s ``get_model_config`` returns it. The
document is built from the artifact's :class:`~app.contract.ModelSpec` and the server's
settings, and says only what is true of this server:

* ``max_batch_size: 0`` and full ``dims`` (batch axis included, -1 where dynamic). Triton's
  ``max_batch_size > 0`` form means "every tensor has the batch as its first axis, left out of
  ``dims``"; ``initial_h``/``initial_c``/``final_h``/``final_c`` carry the batch on their
  *second* axis ([layers, batch, hidden]), which that form cannot express. perf_analyzer runs
  with this form and a data file that gives ``input`` (measured; see docs/triton-tools.md).
* ``optional: true`` on ``sequence_lens``, ``initial_h``, ``initial_c``: the server fills them in.
* the server batches requests together along the batch axis, up to ``max_batch_size``
  sequences (in ``parameters``, since the Triton field of that name must stay 0, see above).
* One scheduler, as Triton's schema allows (``scheduling_choice`` is a oneof in its proto):
  ``dynamic_batching`` with the queue delay in µs for stateless (bidirectional) models;
  ``sequence_batching`` for stateful ones, since that is what a sequence client (perf_analyzer's
  sequence mode, ``sequence_id``) needs to see: chunks of different sequences still batch
  together, oldest first, and the server keeps each sequence's state (``streams``). Clients may
  instead carry the state (``final_h``/``final_c`` back as ``initial_h``/``initial_c``);
  ``parameters.state`` says so, and ``parameters.stateful`` which models carry state.
"""

from __future__ import annotations

from typing import Any

from app import contract
from app.v2 import request
from app.config import Settings
from app.contract import ModelSpec
from app.engine.runtime import CUDA

TRITON_TYPES = {"FP32": "TYPE_FP32", "INT32": "TYPE_INT32"}


def _param(value: object) -> dict[str, str]:
    return {"string_value": str(value).lower() if isinstance(value, bool) else str(value)}


def triton_config(name: str, spec: ModelSpec, settings: Settings, provider: str, versions: list[int]) -> dict[str, Any]:
    """The Triton ``ModelConfig`` JSON of model ``name`` (its loaded ``versions``, ascending)."""
    ins, outs = spec.input_shapes(), spec.output_shapes()
    inputs = [
        {
            "name": n,
            "data_type": TRITON_TYPES[request.EXPECTED_DATATYPE[n]],
            "format": "FORMAT_NONE",
            "dims": ins[n],
            "optional": n != contract.INPUT,
        }
        for n in spec.input_names
    ]
    outputs = [{"name": n, "data_type": "TYPE_FP32", "dims": outs[n]} for n in spec.output_names]
    if name in settings.model_versions:
        policy: dict[str, Any] = {"specific": {"versions": versions}}
    else:
        policy = {"latest": {"num_versions": 1}}
    parameters = {
        "max_sequences_per_batch": _param(settings.max_batch_size),
        "max_sequence_length": _param(settings.max_sequence_length),
        "stateful": _param(spec.stateful),
        "task": _param(spec.task),
    }
    if spec.stateful:
        parameters["state"] = _param(
            "kept by the server per sequence_id (sequence_batching), or carried by the client: send "
            f"{contract.FINAL_H}/{contract.FINAL_C} back as {contract.INITIAL_H}/{contract.INITIAL_C}"
        )
    config = {
        "name": name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": policy,
        "max_batch_size": 0,
        "input": inputs,
        "output": outputs,
        "instance_group": [
            {
                "name": name,
                "kind": "KIND_GPU" if provider == CUDA else "KIND_CPU",
                "count": settings.batches_in_flight,
            }
        ],
        "default_model_filename": "model.onnx",
        "parameters": parameters,
    }
    if not spec.stateful:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": round(settings.max_queue_delay_ms * 1000),
            "preserve_ordering": False,
        }
    else:
        # Server-kept state (``streams``): chunks of different sequences batch together, oldest
        # first; each sequence's state is kept between its chunks.
        config["sequence_batching"] = {
            "max_sequence_idle_microseconds": round(settings.sequence_idle_timeout_s * 1e6),
            "oldest": {
                "max_candidate_sequences": settings.max_live_sequences,
                "max_queue_delay_microseconds": round(settings.max_queue_delay_ms * 1000),
            },
        }
    return config
