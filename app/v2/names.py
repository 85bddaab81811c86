"""Model names and versions: the one rule for every transport, the repository and discovery.

- names: ``^[A-Za-z0-9_][A-Za-z0-9_.-]*$`` (so never ``.`` or ``..``), at most 255 characters
  (a directory name in the repository);
- versions: ASCII decimal digits without a leading zero, at most 18 of them (a positive int64).

Why one module: the URL guard (``app.http.paths``), the repository API, model discovery on disk
and any other front end must agree on which names exist; two rules once let a directory named
``_x9`` be served by the URL rule yet never discovered. ``str.isdigit()`` is not the version
rule: it accepts ``²``, ``١`` and ``１``.
"""

from __future__ import annotations

import re

from app.v2.errors import InvalidInput

NAME_RULE = "model names match ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ (at most 255 characters, not '.' or '..')"
VERSION_RULE = "versions are ASCII decimal digits without a leading zero (1 to 18 digits)"

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
_VERSION = re.compile(r"[1-9][0-9]{0,17}")


def is_name(name: str) -> bool:
    """Whether ``name`` follows :data:`NAME_RULE`."""
    return _NAME.fullmatch(name) is not None


def is_version(version: str) -> bool:
    """Whether ``version`` (text, as in a URL or a directory name) follows :data:`VERSION_RULE`."""
    return _VERSION.fullmatch(version) is not None


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
