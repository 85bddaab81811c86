"""The API described: an honest OpenAPI document and Swagger UI served offline.

FastAPI's own ``/docs`` and ``/redoc`` pages load Swagger UI, ReDoc and fonts from CDNs, so on
an air-gapped cluster they stay blank. Here ``/docs`` is Swagger UI 5 (which renders FastAPI's
OpenAPI 3.1; Swagger UI 4 cannot) with every asset served by this server from the
``swagger-ui-py`` package, and no external URL in the page (its spec validator, which calls
out to swagger.io, is switched off). ReDoc has no Python package that ships its assets, so
``/redoc`` is not served: it redirects to ``/docs``.

The document itself is post-processed in one place: FastAPI adds a 422 answer to every route
with parameters, but this server maps request validation errors to 400 (``errors``), so the
422s and their schemas are removed; path parameters that a route's function does not declare
(the refusals of unsupported extensions) are added, so the document validates.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

DOCS = "/docs"
ASSETS = "/docs/assets"
_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


def swagger_ui_assets() -> Path:
    """Swagger UI's files as the ``swagger-ui-py`` package ships them."""
    import swagger_ui

    return Path(swagger_ui.__file__).resolve().parent / "static"


def page(title: str, prefix: str, openapi_url: str) -> str:
    """The Swagger UI page; every URL in it is on this server (``prefix`` is the root path)."""
    assets = html.escape(prefix + ASSETS)
    spec_url = json.dumps(prefix + openapi_url).replace("<", "\\u003c")  # a JS string, safe in <script>
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} - API</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: {spec_url},
  dom_id: "#swagger-ui",
  validatorUrl: null,
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
}});
</script>
</body>
</html>
"""


def _honest(doc: dict[str, Any]) -> dict[str, Any]:
    for path, operations in doc.get("paths", {}).items():
        declared = _PARAM.findall(path)
        for op in operations.values():
            op.get("responses", {}).pop("422", None)
            params = op.setdefault("parameters", [])
            have = {p["name"] for p in params if p.get("in") == "path"}
            for name in declared:
                if name not in have:
                    params.append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
            if not params:
                del op["parameters"]
    schemas = doc.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return doc


def install(app: FastAPI) -> None:
    """Serve ``/docs`` (and its assets) offline and post-process the OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _honest(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(ASSETS, StaticFiles(directory=swagger_ui_assets()), name="docs-assets")

    @app.get(DOCS, include_in_schema=False)
    async def swagger(request: Request) -> Response:
        prefix = request.scope.get("root_path", "")
        return HTMLResponse(page(app.title, prefix, app.openapi_url or "/openapi.json"))

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> Response:
        return RedirectResponse(request.scope.get("root_path", "") + DOCS)
