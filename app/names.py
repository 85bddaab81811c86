"""Model names and versions as they may appear in a URL, checked before anything looks them up.

Why a module of its own: a name or version reaches the server percent-encoded, and the server
must decide on exactly the text it will look up. uvicorn decodes ``%2f`` into ``/`` before the
router sees the path, so ``/v2/models/a%2fb/infer`` would silently route elsewhere, and
``str.isdigit()`` accepts ``²``, ``١`` and ``１`` (``int()`` then fails or maps them to 1).
:func:`from_raw_path` therefore reads the *raw* path, splits it on the literal ``/``, decodes each
segment exactly once and checks it against one rule:

- names: ``^[A-Za-z0-9_][A-Za-z0-9_.-]*$`` (so never ``.`` or ``..``), at most 255 characters
  (a directory name in the repository);
- versions: ASCII decimal digits without a leading zero, at most 18 of them (a positive int64).

Anything else (``%2e%2e``, ``%2f``, double encoding, non-ASCII digits, NUL, empty) is a 400
naming the rule, for every endpoint under ``/v2/models/`` and ``/v2/repository/models/``.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote_to_bytes

from .errors import InvalidInput

NAME_RULE = "model names match ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ (at most 255 characters, not '.' or '..')"
VERSION_RULE = "versions are ASCII decimal digits without a leading zero (1 to 18 digits)"

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
_VERSION = re.compile(r"[1-9][0-9]{0,17}")

# Path prefixes whose next segment is a model name ("/v2/models/stats" lists every model's
# statistics: "stats" is then in the name's place, and is a valid name).
_MODEL_PREFIXES = ((b"v2", b"models"), (b"v2", b"repository", b"models"))


def check_name(name: str) -> str:
    """``name`` if it follows :data:`NAME_RULE`; else InvalidInput naming the rule."""
    if not _NAME.fullmatch(name):
        raise InvalidInput(f"invalid model name {name!r}: {NAME_RULE}")
    return name


def check_version(version: str) -> int:
    """The version number if ``version`` follows :data:`VERSION_RULE`; else InvalidInput."""
    if not _VERSION.fullmatch(version):
        raise InvalidInput(f"invalid model version {version!r}: {VERSION_RULE}")
    return int(version)


def check(name: str, version: str | None) -> None:
    """Both rules at once, for callers that got the name and version some other way."""
    check_name(name)
    if version is not None:
        check_version(version)


def from_raw_path(raw_path: bytes) -> tuple[str, str | None] | None:
    """The (name, version) a request addresses, checked; None when the path addresses no model.

    ``raw_path`` is the ASGI scope's undecoded path. It is split on the literal ``/`` first and
    each segment decoded exactly once after (``%2f`` stays inside its segment, ``%252e`` stays
    ``%2e``), the way the router sees the prefix (``/%76%32/models/...`` is ``/v2/models/...``).
    Raises InvalidInput for a name or version that breaks its rule, before any route runs.
    """
    parts = raw_path.split(b"/")[1:]
    if b"%" in raw_path:
        parts = [unquote_to_bytes(p) for p in parts]
    for prefix in _MODEL_PREFIXES:
        n = len(prefix)
        if len(parts) > n and tuple(parts[:n]) == prefix:
            name = check_name(_text(parts[n]))
            version = None
            if len(parts) > n + 2 and parts[n + 1] == b"versions":
                version = _text(parts[n + 2])
                check_version(version)
            return name, version
    return None


def check_query(query_string: bytes) -> None:
    """Check every ``version`` query parameter (FastAPI reads one on the routes without a
    ``/versions/{v}`` segment), decoded the way Starlette decodes it."""
    if b"version" in query_string:
        for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if key == "version":
                check_version(value)


def _text(segment: bytes) -> str:
    # Not UTF-8: kept visible as \xNN escapes, which no rule accepts.
    return segment.decode("utf-8", errors="backslashreplace")
