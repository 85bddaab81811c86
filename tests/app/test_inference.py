"""The inference fast path matches with the router's own route table (one table, not two)."""

from __future__ import annotations

import pytest

from app.http import routes
from app.http.inference import fast_paths


def test_fast_path_patterns_are_the_routers_inference_routes() -> None:
    paths = fast_paths(routes.router.routes, (routes.infer, routes.infer_latest))
    posted = {r.path_regex.pattern for r in routes.router.routes
              if "POST" in (getattr(r, "methods", None) or ()) and r.path.endswith("/infer")}
    assert {p.pattern for p in paths} == posted and len(posted) == 2
    by_path = {p.match("/v2/models/m/versions/7/infer") is not None: p for p in paths}
    assert by_path[True].match("/v2/models/m/versions/7/infer").groupdict() == {"name": "m", "version": "7"}
    assert by_path[False].match("/v2/models/m/infer").groupdict() == {"name": "m"}
    assert not any(p.match("/v2/models/m/ready") for p in paths)


def test_fast_path_refuses_to_start_without_its_routes() -> None:
    async def gone() -> None: ...

    with pytest.raises(RuntimeError, match="found 1 routes for 2 endpoints"):
        fast_paths(routes.router.routes, (routes.infer, gone))
