"""Optional bearer-token authentication over HTTP (the token and its check: ``app.v2.auth``).

What is protected: every path under ``/v2`` (inference, model metadata/ready/config/stats,
repository, server metadata) except the two health probes, which the kubelet calls without
credentials. ``/metrics`` (Prometheus scrapes it inside the cluster) and the API docs stay open.
Checked on the decoded path, so an encoded ``/v2`` (``/%76%32/...``) is protected as well.
"""

from __future__ import annotations

from app.v2.auth import Bearer, TokenError, load_token

__all__ = ["OPEN_PATHS", "BearerAuth", "TokenError", "load_token", "protects"]

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


def protects(path: str) -> bool:
    """Whether ``path`` (decoded, as routed) needs the token."""
    return (path == "/v2" or path.startswith("/v2/")) and path not in OPEN_PATHS


class BearerAuth(Bearer):
    """Checks a request's ``Authorization`` header against one token."""

    def check(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Raise Unauthorized unless ``headers`` (ASGI, lower-case names) carry the token."""
        value = None
        for key, v in headers:
            if key == b"authorization":
                value = v
                break
        self.verify(value)
