"""Pydantic models of the Open Inference Protocol bodies, for the OpenAPI document only.

The inference hot path never validates through these (``protocol`` decodes raw bytes with
orjson and numpy, which is several times cheaper on two cores); they exist so ``/docs`` and
``/openapi.json`` describe the API exactly, for users and for schema-driven fuzzers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]


class TensorParameters(BaseModel):
    binary_data_size: int | None = Field(
        None, ge=0, description="Binary tensor extension: this tensor's bytes follow the JSON header."
    )


class RequestInput(BaseModel):
    name: str = Field(description="`input` (required), `sequence_lens`, `initial_h`, `initial_c`.")
    shape: list[int] = Field(description="`input`: [n, time, features]; `sequence_lens`: [n].")
    datatype: Datatype
    parameters: TensorParameters | None = None
    data: list[Any] | None = Field(None, description="Row-major values, flat or nested.")


class RequestedOutput(BaseModel):
    name: str = Field(description="`output`, and for unidirectional models `final_h`, `final_c`.")
    parameters: dict[str, Any] | None = Field(None, description='`{"binary_data": true}` for raw bytes.')


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description='`{"binary_data_output": true}` for raw bytes.')
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = Field(None, description="Default: every output.")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[float] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


class Error(BaseModel):
    error: str = Field(description="What is wrong with the request, naming the input or limit.")


class TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 for the dynamic batch and time axes.")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any]


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` substituted, so it stands alone in OpenAPI."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline(InferenceRequest.model_json_schema())},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "Binary tensor extension: JSON header of `Inference-Header-Content-Length` bytes, then raw tensors.",
            },
        },
    },
}

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "Malformed request or input that does not fit the model."},
    404: {"model": Error, "description": "Unknown model or version."},
    413: {"model": Error, "description": "Body larger than max_request_bytes."},
    503: {"model": Error, "description": "Queue full, model not ready or server draining; see Retry-After."},
    504: {"model": Error, "description": "Not answered within request_timeout_s."},
}
