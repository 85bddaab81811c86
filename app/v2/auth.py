"""Bearer-token authentication, for every transport (``api_key`` / ``api_key_file``).

The token is loaded and checked here once; each front end says where the credential travels
(HTTP: the ``Authorization`` header, ``app.http.auth``; gRPC: ``authorization`` metadata,
``app.grpc.auth``) and which calls stay open (the health probes).

The token is compared as SHA-256 digests with :func:`hmac.compare_digest`: constant time in the
content *and* the length of what the client sent.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from app.config import Settings
from app.v2.errors import Unauthorized


class TokenError(ValueError):
    """The configured token cannot be used; the message names the setting."""


def load_token(settings: Settings) -> bytes | None:
    """The configured token, or None when authentication is off. Raises TokenError."""
    if settings.api_key is not None:
        token, source = settings.api_key.get_secret_value(), "api_key"
    elif settings.api_key_file is not None:
        path = Path(settings.api_key_file)
        try:
            token, source = path.read_text(encoding="utf-8"), f"api_key_file {path}"
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenError(f"cannot read api_key_file {path}: {exc}") from None
    else:
        return None
    token = token.strip()
    if not token:
        raise TokenError(f"{source} is empty; set a token or unset it to turn authentication off")
    if not token.isascii() or any(c.isspace() or not c.isprintable() for c in token):
        raise TokenError(f"{source} must be printable ASCII without spaces (it travels in an HTTP header)")
    return token.encode("ascii")


class Bearer:
    """Checks one ``Authorization`` value (``Bearer <token>``) against one token."""

    def __init__(self, token: bytes) -> None:
        self._digest = hashlib.sha256(token).digest()

    def verify(self, value: bytes | None) -> None:
        """Raise Unauthorized unless ``value`` (the credential as sent, or None) carries the token."""
        if value is None:
            raise Unauthorized("missing credentials: send the header 'Authorization: Bearer <token>'")
        scheme, _, credential = value.strip().partition(b" ")
        credential = credential.strip()
        if scheme.lower() != b"bearer" or not credential:
            raise Unauthorized("unsupported credentials: use the Bearer scheme, 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(hashlib.sha256(credential).digest(), self._digest):
            raise Unauthorized("invalid bearer token", invalid_token=True)
