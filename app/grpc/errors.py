"""Protocol errors as gRPC status codes: the one mapping from an error's Open Inference
Protocol status (``app.v2.errors``) to what a gRPC client receives.

The meaning of each error is its class in ``app.v2.errors``; this module only says how gRPC
writes it. ``retry-after`` (seconds) travels as trailing metadata, as HTTP's Retry-After header.
"""

from __future__ import annotations

import grpc

from app.v2.errors import Rendered, render

# Open Inference Protocol (HTTP) status -> gRPC status code.
CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,  # SequenceEnded: a sequence that ended or was evicted
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# The client went away (its deadline passed or it cancelled): counted as HTTP's 499 does in
# nginx, a client-side outcome, not a server error.
CLIENT_GONE = 499


def code_of(status: int) -> grpc.StatusCode:
    """The gRPC code of an Open Inference Protocol status (INTERNAL for anything unmapped)."""
    return CODES.get(status, grpc.StatusCode.INTERNAL)


def trailers(err: Rendered) -> tuple[tuple[str, str], ...]:
    """The error's headers that a gRPC client can use, as trailing metadata."""
    retry = err.headers.get("Retry-After")
    return (("retry-after", retry),) if retry is not None else ()


__all__ = ["CLIENT_GONE", "CODES", "code_of", "render", "trailers"]
