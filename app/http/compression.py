"""HTTP compression: compressed request bodies in, gzip answers out.

Requests: ``tritonclient``'s ``request_compression_algorithm`` sends the whole body (JSON header
and binary tensors) with ``Content-Encoding: gzip`` or ``deflate``. :func:`decode_body`
inflates it with zlib, in bounded steps, so the body limit applies to the *decompressed* size:
a small "zip bomb" is refused with 413 after at most ``limit + 1`` bytes were produced, never
expanded in full. Any other encoding is refused with 415 rather than read as plain bytes.

Responses: Starlette's ``GZipMiddleware`` compresses an answer when the request says
``Accept-Encoding: gzip`` and the answer is at least ``gzip_min_bytes`` long (small answers
cost more CPU to compress than they save on the wire). ``deflate`` answers are not offered:
HTTP lets the server answer uncompressed, which every client reads.
"""

from __future__ import annotations

import asyncio
import zlib

from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app.v2.errors import InvalidInput, PayloadTooLarge, UnsupportedEncoding

# Content-Encoding -> zlib wbits: gzip's header and trailer, or zlib's (RFC 1950, what HTTP's
# "deflate" means and what tritonclient sends).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_STEP = 1 << 20  # inflate at most 1 MiB per call


def decode_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before compression; refuses unknown encodings (415) and bodies that
    inflate past ``limit`` bytes (413)."""
    if encoding is None:
        return body
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    for coding in reversed(codings):  # applied in the order listed, so undone last-first
        if coding == "identity":
            continue
        wbits = _WBITS.get(coding)
        if wbits is None:
            raise UnsupportedEncoding(
                f"Content-Encoding {coding!r} is not supported; send gzip, deflate or an uncompressed body"
            )
        body = _inflate(body, wbits, coding, limit)
    return body


def _inflate(data: bytes, wbits: int, coding: str, limit: int) -> bytes:
    if coding == "deflate" and data[:1] and (data[0] & 0x0F) != 8:
        wbits = -zlib.MAX_WBITS  # raw deflate without the zlib header, as some clients send
    inflater = zlib.decompressobj(wbits)
    out: list[bytes] = []
    size = 0
    pending = data
    try:
        while True:
            chunk = inflater.decompress(pending, _STEP)
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    f"request body inflates past the limit of {limit} bytes (Content-Encoding: {coding})"
                )
            out.append(chunk)
            pending = inflater.unconsumed_tail
            if not pending and not chunk:
                break
        tail = inflater.flush()
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {coding} data: {exc}") from None
    if size + len(tail) > limit:
        raise PayloadTooLarge(f"request body inflates past the limit of {limit} bytes (Content-Encoding: {coding})")
    if not inflater.eof:
        raise InvalidInput(f"request body is truncated {coding} data")
    out.append(tail)
    return b"".join(out)


_GZIP_IN_THREAD = 128 * 1024  # Starlette's GZipMiddleware: larger bodies are compressed off the loop


def _gzip(body: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # as GZipMiddleware
    return compressor.compress(body) + compressor.flush()


async def gzip_body(body: bytes) -> bytes:
    """``body`` gzip-compressed the way Starlette's GZipMiddleware does it (level 9), in a thread
    when large, for the inference entry that answers without the middleware."""
    if len(body) >= _GZIP_IN_THREAD:
        return await asyncio.to_thread(_gzip, body)
    return _gzip(body)


class ResponseCompression:
    """Starlette's GZipMiddleware, entered only by requests that accept gzip.

    Measured under load (py-spy, 32 clients): wrapping every request in GZipMiddleware cost
    about 5 % of the server's CPU (building a Headers mapping and an identity responder per
    request) although no benchmark or tritonclient default asks for gzip; a scan of the raw
    header list costs a fraction of that.
    """

    def __init__(self, app: ASGIApp, minimum_size: int) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=minimum_size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for key, value in scope["headers"]:
                if key == b"accept-encoding":
                    if b"gzip" in value.lower():
                        await self.gzip(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)
