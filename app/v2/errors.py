"""Protocol errors: a few exception classes, each with one meaning for every transport.

Front-end, codec and engine code raise these; nothing else decides what an error means. A
class's ``status`` is its Open Inference Protocol (REST) status, the protocol's own vocabulary;
each front end maps it once to what its transport answers (``app.http.errors`` builds the
``{"error": "<message naming the problem>"}`` body). The engine raises them too, so they cross
the process boundary by class name (:func:`rebuild`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from app.contract import ContractError


class ServingError(Exception):
    """Base class: ``status`` and optional extra ``headers`` decide the HTTP answer."""

    status: int = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInput(ServingError):
    """The request is malformed or does not fit the model (name, dtype, shape, values)."""

    status = 400


class PayloadTooLarge(ServingError):
    status = 413


class UnsupportedEncoding(ServingError):
    """A request body in a ``Content-Encoding`` the server cannot decode (only gzip, deflate)."""

    status = 415


class NotSupported(ServingError):
    """A KServe/Triton protocol extension this server does not implement; the message names it,
    so a client learns why instead of reading a bare 404."""

    status = 501


class ModelNotFound(ServingError):
    status = 404


class ControlDisabled(ServingError):
    """Loading and unloading models is switched off (``model_control_mode=none``)."""

    status = 403


class Unavailable(ServingError):
    """Refused up front so that nothing accepted is lost; the client may retry."""

    status = 503

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class QueueFull(Unavailable):
    pass


class ShuttingDown(Unavailable):
    pass


class ModelNotReady(Unavailable):
    pass


class UnknownSequence(ServingError):
    """A chunk for a sequence id that was never started."""

    status = 404


class SequenceEnded(ServingError):
    """A chunk for a sequence that ended or was evicted: the client must start it again."""

    status = 409


class TooManySequences(Unavailable):
    """``max_live_sequences`` are live: a new sequence waits for one to end or be evicted."""


class EngineUnavailable(Unavailable):
    """The engine process is gone or not reachable; the supervisor restarts or stops the pod."""


class RequestTimeout(ServingError):
    status = 504


class Unauthorized(ServingError):
    """Missing, malformed or wrong bearer token (``auth``); the challenge tells the client how."""

    status = 401

    def __init__(self, message: str, *, invalid_token: bool = False) -> None:
        challenge = 'Bearer realm="lstm-serve"' + (', error="invalid_token"' if invalid_token else "")
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class BodyTimeout(ServingError):
    """The client did not send its whole request in time (``guard``); the connection is closed,
    since the rest of a stalled body could still arrive and be read as the next request."""

    status = 408

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class InferenceFailed(ServingError):
    """ONNX Runtime failed on a batch: only that batch's requests get it."""

    status = 500


def _kinds(cls: type[ServingError]) -> dict[str, type[ServingError]]:
    out = {cls.__name__: cls}
    for sub in cls.__subclasses__():
        out.update(_kinds(sub))
    return out


def rebuild(kind: str, message: str, headers: dict[str, str]) -> ServingError:
    """An error the engine process raised for a request, raised again in the front-end worker that
    sent it: same class (so the same status), message and headers."""
    cls = _kinds(ServingError).get(kind, ServingError)
    err = cls.__new__(cls)
    ServingError.__init__(err, message, headers=headers)
    return err


@dataclass(frozen=True)
class Rendered:
    """An error as the protocol answers it."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def body(self) -> bytes:
        return orjson.dumps({"error": self.message})


def render(exc: Exception) -> Rendered:
    """The one mapping from a request's exception to its answer (used by every endpoint)."""
    if isinstance(exc, ServingError):
        return Rendered(exc.status, exc.message, exc.headers)
    if isinstance(exc, ContractError):  # a tensor that does not fit the artifact's contract
        return Rendered(400, str(exc))
    raise TypeError(f"not a protocol error: {exc!r}")
