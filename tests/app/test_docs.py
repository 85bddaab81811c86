"""The API described honestly, and readable offline: the OpenAPI document lists what the server
answers (and nothing it does not), and /docs renders in headless Chromium (Debian's package)
with every asset from this server and external hosts unreachable."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

import httpx
import pytest

from tests.conftest import Server

EXTERNAL = re.compile(r"(?:https?:)?//(?!127\.0\.0\.1|localhost)[a-z0-9.-]+\.[a-z]{2,}", re.I)


def openapi(server: Server) -> dict:
    return httpx.get(f"{server.url}/openapi.json").json()


def test_openapi_lists_every_status_the_server_sends_and_no_422(server: Server) -> None:
    doc = openapi(server)
    paths = doc["paths"]
    for path, ops in paths.items():
        for method, op in ops.items():
            assert "422" not in op["responses"], f"{method} {path} lists a 422 the server never sends"
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert set(infer["responses"]) == {"200", "400", "404", "413", "415", "500", "503", "504"}
    assert set(infer["responses"]["200"]["content"]) == {"application/json", "application/octet-stream"}
    assert set(paths["/v2/health/ready"]["get"]["responses"]) == {"200", "503"}
    assert set(paths["/v2/models/{name}/config"]["get"]["responses"]) == {"200", "404", "503"}
    assert set(paths["/v2/logging"]["get"]["responses"]) == {"501"}
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]


def test_openapi_has_no_ignored_version_query_and_no_negative_shapes(server: Server) -> None:
    doc = openapi(server)
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}", "/v2/models/{name}/ready"):
        for op in doc["paths"][path].values():
            assert [p["name"] for p in op["parameters"]] == ["name"], f"{path}: {op['parameters']}"
    infer = doc["paths"]["/v2/models/{name}/infer"]["post"]
    schema = infer["requestBody"]["content"]["application/json"]["schema"]
    shape = schema["properties"]["inputs"]["items"]["properties"]["shape"]
    assert shape["items"] == {"type": "integer", "minimum": 0}
    assert "Inference-Header-Content-Length" in infer["description"]
    assert "InferenceFastPath" not in infer["description"], "the description is for users, not maintainers"


def test_head_works_on_the_health_endpoints(server: Server) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/uni/ready", "/v2/models/uni/versions/1/ready"):
        resp = httpx.head(server.url + path)
        assert resp.status_code == 200 and resp.content == b"", path
    assert httpx.head(f"{server.url}/v2/models/nope/ready").status_code == 404


def test_docs_page_names_no_external_host_and_its_assets_are_served(server: Server) -> None:
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert not EXTERNAL.findall(page.text), EXTERNAL.findall(page.text)
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) == 3
    for asset in assets:
        assert httpx.get(server.url + asset).status_code == 200, asset
    redirect = httpx.get(f"{server.url}/redoc")
    assert redirect.status_code == 307 and redirect.headers["location"] == "/docs"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_docs_render_offline_in_headless_chromium(server: Server) -> None:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", f"--user-data-dir={profile}",
                # Every host but this server is unreachable: an asset from a CDN would not load.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--virtual-time-budget=15000", "--dump-dom", f"{server.url}/docs",
            ],
            capture_output=True, text=True, timeout=120,
        )
    dom = proc.stdout
    assert 'class="swagger-ui' in dom, proc.stderr[-2000:]
    # Swagger UI rendered the operations from /openapi.json: the inference endpoint is there.
    assert re.search(r'data-path="/v2/models/\{name\}/infer"', dom), dom[-3000:]
    assert "opblock-post" in dom and "opblock-summary-path" in dom
    assert "Unable to render this definition" not in dom
