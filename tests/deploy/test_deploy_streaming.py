"""k8s/streaming: the ingress that keeps a sequence's chunks on one pod renders, validates
strictly, hashes on the header docs/streaming.md tells clients to send, and reaches the Service."""

from __future__ import annotations

import kubernetes_validate
import pytest

from .deploy_lib import CPU, ROOT, render

HEADER = "X-Sequence-ID"


@pytest.mark.parametrize("version", sorted({"1.29.0", kubernetes_validate.latest_version()}))
def test_streaming_ingress_validates(version: str) -> None:
    (ingress,) = render("streaming")
    assert ingress["kind"] == "Ingress"
    kubernetes_validate.validate(ingress, version, strict=True)


def test_it_hashes_on_the_documented_header_and_routes_to_the_service() -> None:
    (ingress,) = render("streaming")
    hashed = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"]
    assert hashed == "$http_" + HEADER.lower().replace("-", "_")
    assert HEADER in (ROOT / "docs" / "streaming.md").read_text()
    service = next(o for o in render(CPU) if o["kind"] == "Service")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
