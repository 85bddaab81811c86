"""Model names and versions as they appear in a URL, checked before anything looks them up.

Why a module of its own: a name or version reaches the server percent-encoded, and the server
must decide on exactly the text it will look up. uvicorn decodes ``%2f`` into ``/`` before the
router sees the path, so ``/v2/models/a%2fb/infer`` would silently route elsewhere, and
``str.isdigit()`` accepts ``²``, ``١`` and ``１`` (``int()`` then fails or maps them to 1).
:func:`from_raw_path` therefore reads the *raw* path, splits it on the literal ``/``, decodes each
segment exactly once and checks it against the one rule of :mod:`app.v2.names`.

Anything else (``%2e%2e``, ``%2f``, double encoding, non-ASCII digits, NUL, empty) is a 400
naming the rule, for every endpoint under ``/v2/models/`` and ``/v2/repository/models/``.
"""

from __future__ import annotations

import functools
from urllib.parse import parse_qsl, unquote_to_bytes

from app.v2.names import check_name, check_version

# Path prefixes whose next segment is a model name ("/v2/models/stats" lists every model's
# statistics: "stats" is then in the name's place, and is a valid name).
_MODEL_PREFIXES = ((b"v2", b"models"), (b"v2", b"repository", b"models"))


@functools.lru_cache(maxsize=1024)
def from_raw_path(raw_path: bytes) -> tuple[str, str | None] | None:
    """The (name, version) a request addresses, checked; None when the path addresses no model.

    Cached (the answer for a path never changes; a refusal raises and is not cached): every
    inference request asks, nearly always for one of a few paths (1.6 us a request uncached).

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
