"""What the server and a model version say about themselves (the protocol's metadata calls),
built once for every transport: REST writes it as JSON, gRPC as the protobuf messages of the
same names."""

from __future__ import annotations

from typing import Any

from app import __version__
from app.config import Settings
from app.engine.catalog import ModelInfo
from app.v2 import request as v2_request

# Triton's names of the protocol extensions served (see ``app.http.extensions``).
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]


def server_metadata() -> dict[str, Any]:
    """The server's name, version and extensions."""
    return {"name": "lstm-serve", "version": __version__, "extensions": EXTENSIONS}


def model_metadata(model: ModelInfo, versions: list[int], settings: Settings) -> dict[str, Any]:
    """Inputs, outputs, datatypes and shapes (-1 for dynamic axes) of ``model``, read from the
    artifact, and its served ``versions``."""
    spec = model.spec
    ins = spec.input_shapes()
    outs = spec.output_shapes()
    doc = {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": n, "datatype": v2_request.EXPECTED_DATATYPE[n], "shape": ins[n]} for n in spec.input_names
        ],
        "outputs": [{"name": n, "datatype": "FP32", "shape": outs[n]} for n in spec.output_names],
        "parameters": {
            **spec.describe(),
            "version": str(model.version),
            "provider": model.provider,
            "required_inputs": ["input"],
            "optional_inputs": [n for n in spec.input_names if n != "input"],
        },
    }
    if spec.stateful:  # server-kept streaming (README "Streaming"), Triton's parameter names
        doc["parameters"]["sequence_batching"] = {
            "parameters": ["sequence_id", "sequence_start", "sequence_end"],
            "sequence_idle_timeout_s": settings.sequence_idle_timeout_s,
            "max_live_sequences": settings.max_live_sequences,
        }
    return doc
