"""Pydantic models of the Open Inference Protocol bodies, for the OpenAPI document only.

The inference hot path never validates through these (``protocol`` decodes raw bytes with
orjson and numpy, which is several times cheaper on two cores); they exist so ``/docs`` and
``/openapi.json`` describe the API exactly, for users and for schema-driven fuzzers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

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
    shape: list[Annotated[int, Field(ge=0)]] = Field(description="`input`: [n, time, features]; `sequence_lens`: [n].")
    datatype: Datatype
    parameters: TensorParameters | None = None
    data: list[Any] | None = Field(
        None,
        description="Row-major values, flat or nested: JSON numbers (integers for INT32). Give exactly one of "
        "`data` and `parameters.binary_data_size`.",
    )


class RequestedOutput(BaseModel):
    name: str = Field(description="`output`, and for unidirectional models `final_h`, `final_c`.")
    parameters: dict[str, Any] | None = Field(
        None, description='`{"binary_data": true}` for raw bytes, `false` for JSON; wins over `binary_data_output`.'
    )


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description='`{"binary_data_output": true}`: every output as raw bytes unless the output says otherwise.'
    )
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = Field(None, description="Default: every output.")


class ResponseOutput(BaseModel):
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
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


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Duration(BaseModel):
    count: int = Field(ge=0)
    ns: int = Field(ge=0, description="Cumulative nanoseconds.")


class InferenceStats(BaseModel):
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration = Field(description="Padding the batch.")
    compute_infer: Duration = Field(description="ONNX Runtime.")
    compute_output: Duration = Field(description="Splitting the batch's answer.")


class BatchStats(BaseModel):
    batch_size: int = Field(ge=1, description="Sequences in the batch.")
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class ModelStatistics(BaseModel):
    name: str
    version: str
    last_inference: int = Field(description="Milliseconds since the epoch; 0 before the first.")
    inference_count: int = Field(description="Sequences run.")
    execution_count: int = Field(description="ONNX Runtime calls (batches).")
    inference_stats: InferenceStats
    batch_stats: list[BatchStats]


class Statistics(BaseModel):
    model_stats: list[ModelStatistics]


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
    "responses": {
        "200": {
            "content": {
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "When binary outputs were asked for: JSON header of "
                    "`Inference-Header-Content-Length` bytes, then the raw output tensors.",
                }
            }
        }
    },
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

_ERROR_TEXT: dict[int, str] = {
    400: "Malformed request or input that does not fit the model; the message names the field.",
    401: "A token is configured and the request's Bearer credential is missing or wrong.",
    403: "Model load/unload while model_control_mode=none.",
    404: "Unknown model or version.",
    408: "Headers or body not complete within body_timeout_s.",
    413: "Body (after decompression) larger than max_request_bytes.",
    415: "Content-Encoding other than gzip, deflate or identity.",
    500: "ONNX Runtime failed on the batch this request ran in.",
    501: "A protocol extension this server does not implement; the message names it.",
    409: "A chunk for a sequence_id that ended or was evicted.",
    503: "Queue full, model not ready or server draining; see Retry-After.",
    504: "Not answered within request_timeout_s.",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of these error statuses, each with the error body."""
    return {code: {"model": Error, "description": _ERROR_TEXT[code]} for code in codes}


ERRORS = responses(400, 404, 413, 415, 500, 503, 504)  # the inference endpoint's

INFER_DESCRIPTION = """Run one or more sequences through the model and get its outputs.

**Inputs.** `input` (FP32, shape `[n, time, features]`) holds `n` sequences of one length.
Sequences of different lengths: pad them to one `time` on the right and give their lengths in
`sequence_lens` (INT32, shape `[n]`, each between 1 and `time`). Unidirectional models also
take `initial_h` and `initial_c` (FP32, `[layers, n, hidden]`): send back the `final_h` and
`final_c` of an earlier answer to continue those sequences where they stopped.

**Outputs.** `output`, and for unidirectional models `final_h`, `final_c`. Without `outputs`
in the request, every output is returned.

**Binary tensors.** Instead of `data`, an input may give `parameters.binary_data_size` and
send its raw little-endian bytes after the JSON, whose length goes in the
`Inference-Header-Content-Length` header (what `tritonclient.http` does by default). Ask for
binary outputs with `parameters.binary_data` on an output or `binary_data_output` on the request;
the output's own setting wins.

**Compression.** Bodies may be sent with `Content-Encoding: gzip` or `deflate`; answers are
gzip-compressed above a size threshold when the request says `Accept-Encoding: gzip`.

Errors answer `{"error": "..."}` naming the problem. The model version is chosen by the path
(`/versions/{version}/infer`), the latest loaded one otherwise.
"""
