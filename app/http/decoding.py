"""Large JSON request bodies decoded in slices, so that one big body never stalls the server.

Why not ``asyncio.to_thread``: orjson and ``np.asarray`` hold the GIL for the whole call, so a
thread frees nothing (measured: a 15.6 MB body of 3.9 M numbers blocked the event loop for
~230 ms either way, and a concurrent ``/v2/health/ready`` waited as long). Instead, above
:data:`THRESHOLD` bytes:

1. each ``"data": [...]`` array is cut out of the body and the rest (the small skeleton) is
   parsed, so the declared shapes are checked against the limits *before* any data is parsed;
2. a flat FP32 array is then parsed in slices of :data:`SLICE` bytes, cut at commas (each slice
   is still parsed by orjson, so JSON's number syntax holds exactly), with the event loop free
   between slices (a slice costs ~2 ms);
3. anything this does not cover (nested ``data``, other datatypes, a ``"data"`` key elsewhere,
   a binary request) takes the one-piece path of :func:`app.http.codec.decode_request`: the same
   answers, only without the slicing.

Small bodies (nearly all requests) go straight to the one-piece path.

While slices are parsed the event loop runs Python without a pause, so a batch's worker thread,
which needs the GIL several times per batch (to start, after ``session.run``, to report back),
waited out CPython's whole 5 ms switch interval at each crossing: a small request beside a
16 MB upload took 80-100 ms p99. For that time only the interval is :data:`SWITCH_INTERVAL_S`
(14-17 ms p99, ``python -m bench.bigbody --valid --rounds 5``; at 1 ms it stayed 80-100 ms). Not
process-wide: at 32 clients of small requests the short interval cost a few per cent.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from types import TracebackType
from typing import Any

import numpy as np
import orjson

from app.http import codec
from app.contract import ModelSpec
from app.v2.errors import InvalidInput
from app.v2.request import InferRequest, Limits

THRESHOLD = 512 * 1024
SLICE = 64 * 1024
# What a cut-out array is replaced with in the skeleton: a string no client can guess.
_MARK = "\x00lstm-serve-" + secrets.token_hex(8) + "-"
SWITCH_INTERVAL_S = 0.0005


class _GilHandOff:
    """The short switch interval while any large body is parsed (event-loop thread only, so a
    count suffices); the process's own interval again once none is."""

    def __init__(self) -> None:
        self.parsing = 0
        self.saved = sys.getswitchinterval()

    def __enter__(self) -> None:
        if self.parsing == 0:
            self.saved = sys.getswitchinterval()
            sys.setswitchinterval(min(self.saved, SWITCH_INTERVAL_S))
        self.parsing += 1

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.parsing -= 1
        if self.parsing == 0:
            sys.setswitchinterval(self.saved)


_HAND_OFF = _GilHandOff()


class _NotSliceable(Exception):
    """This body takes the one-piece path."""


async def decode_request(body: bytes, header_length: str | None, spec: ModelSpec, limits: Limits) -> InferRequest:
    """:func:`app.http.codec.decode_request`, giving the event loop back while a large JSON body
    is parsed; raises InvalidInput."""
    if len(body) < THRESHOLD or header_length is not None:
        return codec.decode_request(body, header_length, spec, limits)
    try:
        doc, arrays = _skeleton(body)
        codec.check_declared_limits(doc.get("inputs"), limits)
        with _HAND_OFF:
            for entry, (start, end) in arrays:
                entry["data"] = await _floats(memoryview(body)[start + 1 : end], entry.get("name"))
    except _NotSliceable:
        return codec.decode_request(body, header_length, spec, limits)
    return codec.decode_document(doc, memoryview(b""), spec, limits)


def _skeleton(body: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], tuple[int, int]]]]:
    """The request without its large ``data`` arrays, and where each array was: (the input entry
    it belongs to, (offset of '[', offset of ']'))."""
    spans: list[tuple[int, int]] = []
    pos = 0
    while (found := body.find(b'"data"', pos)) >= 0:
        m = codec.DATA_KEY.match(body, found)
        pos = found + 6
        if m is None:
            continue
        start = m.end() - 1
        # A flat number array holds no quote or brace: it ends before the next one.
        stop = min((i for i in (body.find(b'"', start), body.find(b"}", start), body.find(b"{", start)) if i >= 0),
                   default=len(body))
        end = body.rfind(b"]", start, stop)
        if end < 0:
            raise _NotSliceable
        if end - start > SLICE:
            spans.append((start, end))
        pos = end
    if not spans:
        raise _NotSliceable
    pieces, last = [], 0
    for i, (start, end) in enumerate(spans):
        pieces += [body[last:start], orjson.dumps(f"{_MARK}{i}")]
        last = end + 1
    pieces.append(body[last:])
    try:
        doc = orjson.loads(b"".join(pieces))
    except orjson.JSONDecodeError:
        raise _NotSliceable from None  # the one-piece path names the error
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    located = []
    for entry in inputs if isinstance(inputs, list) else ():
        data = entry.get("data") if isinstance(entry, dict) else None
        if isinstance(data, str) and data.startswith(_MARK):
            if entry.get("datatype") != "FP32":
                raise _NotSliceable
            located.append((entry, spans[int(data[len(_MARK):])]))
    if len(located) != len(spans):
        raise _NotSliceable  # a "data" key somewhere else: parse it all as it is
    return doc, located


async def _floats(inner: memoryview, name: object) -> np.ndarray:
    """The numbers between a flat array's brackets, as float32, a slice at a time."""
    parts: list[np.ndarray] = []
    n = len(inner)
    pos = 0
    while pos < n:
        cut = n if n - pos <= SLICE else _next_comma(inner, pos + SLICE)
        piece = bytes(inner[pos:cut])
        if b"[" in piece or b"]" in piece:
            raise _NotSliceable  # nested: the one-piece path
        if not piece.strip():
            raise InvalidInput(f"malformed JSON: an empty element in the 'data' of input '{name}'")
        try:
            values = orjson.loads(b"[" + piece + b"]")
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"malformed JSON: {exc} (in a slice of the 'data' of input '{name}')") from None
        parts.append(codec.json_values(values, name, "FP32"))  # as strict as the one-piece path
        pos = cut + 1
        await asyncio.sleep(0)  # let everything else run between slices
    return np.concatenate(parts) if parts else np.empty(0, np.float32)


def _next_comma(view: memoryview, at: int) -> int:
    i = bytes(view[at : at + 64]).find(b",")
    if i >= 0:
        return at + i
    rest = bytes(view[at:]).find(b",")  # a number longer than 64 bytes: rare, and legal
    return len(view) if rest < 0 else at + rest
