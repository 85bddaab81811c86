"""Errors as HTTP answers: the one place that turns exceptions into responses.

The meaning of each error (its class and status) is defined once in :mod:`app.v2.errors`;
this module only writes it the way HTTP and FastAPI need it.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.contract import ContractError
from app.v2.errors import ServingError, render

log = logging.getLogger("lstm_serve.errors")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def unexpected_error(exc: BaseException) -> Response:
    """A bug, not a bad request: logged with its traceback, answered 500 without internals.

    Called by the request middleware (``middleware.RequestObserver``), which sits inside
    Starlette's outermost error layer, so the answer still carries the request id."""
    log.error("unhandled error", exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}")


def install_handlers(app: FastAPI) -> None:
    """Register the single mapping from exceptions to responses."""

    async def protocol_error(request: Request, exc: Exception) -> Response:
        err = render(exc)
        request.state.error = err.message  # for the access log line
        return error_response(err.status, err.message, err.headers)

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return error_response(400, "invalid request: " + "; ".join(parts))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":  # no route: say which, and where to look
            message = f"no endpoint {request.url.path}; the API is described at /docs and /openapi.json"
        elif exc.status_code == 405 and message == "Method Not Allowed":
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, message, dict(exc.headers or {}))

    app.add_exception_handler(ServingError, protocol_error)
    app.add_exception_handler(ContractError, protocol_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
