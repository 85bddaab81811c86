"""The process's ASGI entry: inference in one flat frame, every other request through FastAPI.

Why: py-spy on one process at 32 connections (bench/results/profile-*.md) put ~43 % of the
event-loop thread in the ASGI layers wrapped around the inference fast path (Starlette's error
layer, RequestObserver, RequestGuard, ResponseCompression, each wrapping send or receive), as
much as the inference path itself. :class:`InferenceEntry` answers
``POST /v2/models/{name}[/versions/{v}]/infer`` itself and does, inline and in the same order,
what those layers did for it:

1. request id (``X-Request-ID`` when valid, else a random one), the in-flight gauge, the clock;
2. the guard: bearer token (401), model name and version rules on the raw path (400), the body
   deadline (408, checked by :func:`app.http.inference.read_body` at each ``receive``);
3. :func:`app.http.inference.infer` (limits 413/400, 503 + Retry-After while draining, ...);
4. gzip for clients that accept it, answers of at least ``gzip_min_bytes`` (as Starlette's
   GZipMiddleware: ``Content-Encoding``, ``Vary``, level 9, large bodies off the loop);
5. ``X-Request-ID`` on the answer; a bug is a 500 that still carries it;
6. once the answer is sent: the request histogram and counter, and the access line.

:meth:`InferenceEntry.handle` does all of it for a request however it came: from ``__call__``
(ASGI, through uvicorn's cycle) or from the connection's protocol with its body in hand
(``app.http.direct``, for a plain request that arrived whole); the two differ only in how the
body is read and the answer written.

Every other request (and the lifespan) goes to the FastAPI app with today's middleware stack
unchanged. The FastAPI inference routes stay for the OpenAPI document and in-process callers.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from app.contract import ContractError
from app.http import compression, paths, routes
from app.http.auth import BearerAuth
from app.http.inference import BodyReader, fast_paths, infer, receiving
from app.http.state import ServerState
from app.observe import RequestLog, request_id
from app.v2.errors import ServingError, render

log = logging.getLogger("lstm_serve.errors")

_JSON = (b"content-type", b"application/json")
Reply = Callable[[int, list[tuple[bytes, bytes]], bytes], Awaitable[None]]
"""Sends an answer: status, headers (``content-length`` included), body."""

_WANTED = {b"content-length": "content-length", b"inference-header-content-length": "inference-header-content-length",
           b"content-encoding": "content-encoding"}


class InferenceEntry:
    """ASGI: inference requests served here with every guarantee of the layers they skip;
    anything else handed to ``app`` (the FastAPI app with its middleware)."""

    def __init__(
        self,
        app: ASGIApp,
        state: ServerState,
        paths: list[re.Pattern[str]],
        auth: BearerAuth | None,
        gzip_min_bytes: int,
        access_log: bool,
    ) -> None:
        self.app = app
        self.state = state
        self.paths = paths
        self.auth = auth
        self.gzip_min_bytes = gzip_min_bytes
        self.body_timeout_s = state.settings.body_timeout_s
        self.metrics = state.metrics
        self.requests = RequestLog(state.metrics, access_log)

    def match(self, path: str) -> re.Match[str] | None:
        """The inference route ``path`` (decoded) addresses, if any (named groups ``name``, ``version``)."""
        for pattern in self.paths:
            found = pattern.match(path)
            if found is not None:
                return found
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = self.match(scope["path"])
            if match is not None:
                async def reply(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
                    await send({"type": "http.response.start", "status": status, "headers": headers})
                    await send({"type": "http.response.body", "body": body})

                await self.handle(scope["headers"], scope.get("raw_path") or scope["path"].encode("utf-8"),
                                  scope["query_string"], match, receiving(receive, scope, self.body_timeout_s), reply)
                return
        await self.app(scope, receive, send)

    async def handle(
        self,
        request_headers: list[tuple[bytes, bytes]],
        raw_path: bytes,
        query: bytes,
        match: re.Match[str],
        read: BodyReader,
        reply: Reply,
    ) -> None:
        """Answer one inference request, whichever way it came (an ASGI request, or one the
        connection's protocol holds whole: ``app.http.direct``): ``read`` reads its body, ``reply``
        sends the answer; metrics and the access line once it is sent."""
        start = time.perf_counter()
        rid_header: bytes | None = None
        accept: bytes | None = None
        wanted: dict[str, str] = {}
        for key, value in request_headers:
            name = _WANTED.get(key)
            if name is not None:
                wanted[name] = value.decode("latin-1")
            elif key == b"x-request-id":
                if rid_header is None:
                    rid_header = value
            elif key == b"accept-encoding" and accept is None:
                accept = value
        rid = request_id(rid_header)
        info: dict[str, Any] = {}
        status = 0
        metrics = self.metrics
        metrics.inflight_add(1)
        try:
            try:  # the guard's checks, then the inference itself
                if self.auth is not None:  # every inference path is under /v2/models/: protected
                    self.auth.check(request_headers)
                if paths.from_raw_path(raw_path) and query:
                    paths.check_query(query)
                params = match.groupdict()
                body, headers = await infer(self.state, params["name"], params.get("version"), read, wanted, info)
                status = 200
            except (ServingError, ContractError) as exc:
                err = render(exc)
                info["error"] = err.message
                status, body = err.status, err.body
                headers = [_JSON, *((k.lower().encode(), v.encode()) for k, v in err.headers.items())]
            except Exception as exc:  # a bug: logged, answered 500 without internals
                log.error("unhandled error", exc_info=exc)
                info["error"] = message = f"internal error: {type(exc).__name__}"
                status, body, headers = 500, orjson.dumps({"error": message}), [_JSON]
            if accept is not None and len(body) >= self.gzip_min_bytes and b"gzip" in accept.lower():
                body = await compression.gzip_body(body)
                headers += [(b"content-encoding", b"gzip"), (b"vary", b"Accept-Encoding")]
            headers += [(b"content-length", str(len(body)).encode()), (b"x-request-id", rid.encode())]
            await reply(status, headers, body)
        finally:
            metrics.inflight_add(-1)
            self.requests.done(rid, info, status or 500, time.perf_counter() - start)


def entry(app: ASGIApp, state: ServerState, auth: BearerAuth | None) -> InferenceEntry:
    """The ASGI app a server process runs: :class:`InferenceEntry` in front of ``app``."""
    settings = state.settings
    return InferenceEntry(app, state, fast_paths(routes.router.routes, (routes.infer, routes.infer_latest)),
                          auth, settings.gzip_min_bytes, settings.access_log)

