"""The inference endpoint, served as a lean ASGI handler in front of FastAPI's router.

Why not a plain FastAPI route: on two cores the HTTP path competes with ONNX Runtime for CPU.
py-spy on the server under 32 clients (bench/results/raw) put about 30 % of all CPU samples in
FastAPI's routing, dependency solving and exception layers between the middleware and the
endpoint, more than decoding and encoding together. ``app.http.entry.InferenceEntry`` answers
``POST /v2/models/{name}[/versions/{v}]/infer`` with :func:`infer`, ahead of FastAPI and its
middleware, and passes everything else on. The FastAPI route of the same path stays, for the
OpenAPI document and for in-process clients, and calls the same :func:`infer`. There is one
route table: the entry matches with the compiled patterns of the router's own inference routes
(:func:`fast_paths`), so a path changed there changes here.

The order of checks keeps overload cheap: a request is refused before its body is decoded, but
only after it is read (answering before reading resets the client's connection).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from starlette.types import Receive, Scope

from app.http import compression
from app.http import decoding
from app.http import codec
from app.http.connections import BODY_EXPIRED
from app.v2.errors import BodyTimeout, InvalidInput, PayloadTooLarge, ShuttingDown
from app.v2.request import Limits
from app.v2.sequences import Job
from app.http.state import ServerState
from app.observe import milliseconds

# The request headers inference reads (the fast path copies only these out of the scope).
REQUEST_HEADERS = ("content-length", codec.HEADER_LENGTH, "content-encoding")
_JSON = (b"content-type", b"application/json")
_BINARY = (b"content-type", b"application/octet-stream")


BodyReader = Callable[[str | None, int], Awaitable[bytes]]
"""Reads a request's whole body, given its declared ``Content-Length`` (or None) and the limit
in bytes; raises PayloadTooLarge (413), BodyTimeout (408) or InvalidInput. A front end passes its
own: :func:`receiving` over ASGI ``receive``, or a body its protocol already holds whole
(``app.http.direct``); :func:`infer` decides when to read."""


def refuse_declared(declared: str | None, limit: int) -> None:
    """413 for a body whose declared length exceeds ``limit``, before any of it is read."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")


def refuse_size(size: int, limit: int) -> None:
    """413 for a body found to exceed ``limit`` (no or a false declared length)."""
    if size > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")


async def read_body(
    receive: Receive, declared: str | None, limit: int, scope: Scope | None = None, timeout_s: float = 0.0
) -> bytes:
    """The whole request body, refused with 413 as soon as it is known to exceed ``limit``.

    ``scope``: the request's, when no ``guard.deadline_receive`` wraps ``receive`` (the flat
    entry): a body that ``connections`` flagged as late raises BodyTimeout (408) here."""
    refuse_declared(declared, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if scope is not None and BODY_EXPIRED in scope:
            raise BodyTimeout(f"request body not complete within body_timeout_s={timeout_s:g}; closing the connection")
        if message["type"] == "http.disconnect":
            raise InvalidInput("client disconnected before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        refuse_size(size, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def receiving(receive: Receive, scope: Scope | None = None, timeout_s: float = 0.0) -> BodyReader:
    """The :data:`BodyReader` of an ASGI request (see :func:`read_body`)."""
    return functools.partial(read_body, receive, scope=scope, timeout_s=timeout_s)


@functools.lru_cache(maxsize=8)
def _timeout_why(timeout_s: float) -> str:
    """What a timed-out request's 408 names: formatted once, not a float's repr a request."""
    return f"request_timeout_s={timeout_s}"


async def infer(
    state: ServerState,
    name: str,
    version: str | None,
    read: BodyReader,
    headers: dict[str, str],
    info: MutableMapping[str, Any],
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Run one inference request; returns (body, response headers). Raises ServingError.

    ``read`` reads the body (after the model is known and held, before admission);
    ``headers`` holds the request's :data:`REQUEST_HEADERS` that were sent;
    ``info`` (the ASGI scope's state) receives what the access log and metrics report.
    """
    if state.draining:
        raise ShuttingDown("server is shutting down; retry on another replica")
    engine = state.engine
    model = engine.model(name, version)
    info["model"] = model.name
    info["version"] = model.version
    # Held until answered: if a swap takes this version out of the catalog meanwhile, it still
    # serves this request (it drains only once nothing holds it).
    engine.hold(model)
    try:
        limit = state.settings.max_request_bytes
        body = await read(headers.get("content-length"), limit)
        engine.admit(model)
        body = compression.decode_body(body, headers.get("content-encoding"), limit)
        limits = state.limits
        if limits.max_batch_size != model.max_batch_size:  # the model's own settings.json
            limits = Limits(model.max_batch_size, limits.max_sequence_length)
        # large JSON bodies are parsed in slices, the event loop free between them
        req = await decoding.decode_request(body, headers.get(codec.HEADER_LENGTH), model.spec, limits)
        timeout = state.settings.request_timeout_s
        job = Job(model.name, model.version, req.sequences, req.outputs, req.stream)
        done = await engine.submit_within(job, timeout, _timeout_why(timeout))
    finally:
        engine.release(model)
    # the access line's figures and Server-Timing's are the same numbers
    info["batch_size"] = done.batch_size
    info["queue_ms"] = queue_ms = milliseconds(done.queue_s)
    info["inference_ms"] = inference_ms = milliseconds(done.inference_s)
    payload, header_length = codec.encode_response(
        model.name, str(model.version), req.id, done.result, req.binary_outputs
    )
    out = [
        (b"server-timing", f"queue;dur={queue_ms}, inference;dur={inference_ms}".encode()),
        (b"x-batch-size", str(done.batch_size).encode()),
    ]
    if header_length is None:
        out.append(_JSON)
    else:
        out += [(b"inference-header-content-length", str(header_length).encode()), _BINARY]
    return payload, out


def fast_paths(routes: Iterable[Any], endpoints: Iterable[Any]) -> list[re.Pattern[str]]:
    """The compiled path patterns of the router's POST routes served by ``endpoints``
    (Starlette's ``path_regex``, with named groups ``name`` and, where versioned, ``version``)."""
    wanted = set(endpoints)
    found = [r.path_regex for r in routes
             if getattr(r, "endpoint", None) in wanted and "POST" in (getattr(r, "methods", None) or ())]
    if len(found) != len(wanted):
        raise RuntimeError(f"the inference fast path found {len(found)} routes for {len(wanted)} endpoints")
    return found
