"""The kustomizations render, and every rendered object is schema-valid.

Built-in kinds: kubernetes-validate, strict (unknown fields fail), against Kubernetes 1.29 (the
oldest we support) and the newest version the installed kubernetes-validate bundles.
Custom resources: the field-structure schemas of crd_schemas.py; a CRD kind without one fails.
"""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest

from .crd_schemas import (
    INFERENCE_SERVICE_COMPONENT_FIELDS,
    INFERENCE_SERVICE_FRAMEWORK_FIELDS,
    SCHEMAS,
)
from .deploy_lib import CPU, KSERVE, OVERLAYS, render

K8S_VERSIONS = sorted({"1.29.0", kubernetes_validate.latest_version()})
RENDERED = (*OVERLAYS, KSERVE)


def _validate_builtin(obj: dict, version: str) -> None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(p) for p in e.path)
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version} at {path}: {e.message}")


@pytest.mark.parametrize("directory", RENDERED)
def test_renders(directory: str) -> None:
    objects = render(directory)
    assert objects, f"k8s/{directory} rendered nothing"
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), f"duplicate objects in k8s/{directory}: {names}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_contains_the_whole_stack(overlay: str) -> None:
    kinds = {o["kind"] for o in render(overlay)}
    assert {
        "Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ServiceMonitor", "PrometheusRule",
    } <= kinds
    assert "InferenceService" not in kinds, "the KServe variant is opt-in (k8s/kserve), not in the overlays"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("directory", RENDERED)
def test_builtin_objects_validate_strict(directory: str, version: str) -> None:
    checked = 0
    for obj in render(directory):
        if (obj["apiVersion"], obj["kind"]) in SCHEMAS:
            continue  # custom resources: test_custom_resources_match_crd_structure
        _validate_builtin(obj, version)
        checked += 1
    if directory in OVERLAYS:
        assert checked >= 5


def test_strict_validation_catches_a_misplaced_field() -> None:
    """Guard for the guard: a typo in a Deployment must fail kubernetes-validate strict mode."""
    deployment = copy.deepcopy(next(o for o in render(CPU) if o["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.29.0", strict=True)


@pytest.mark.parametrize("directory", RENDERED)
def test_custom_resources_match_crd_structure(directory: str) -> None:
    for obj in render(directory):
        key = (obj["apiVersion"], obj["kind"])
        if "." not in obj["apiVersion"].split("/")[0] or obj["apiVersion"].split("/")[0].endswith(".k8s.io"):
            continue  # built-in API group
        assert key in SCHEMAS, (
            f"{obj['kind']} ({obj['apiVersion']}) is a custom resource without a schema in "
            "tests/deploy/crd_schemas.py: add one"
        )
        jsonschema.validate(obj, SCHEMAS[key])


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_inference_service_predictor_is_a_valid_pod_spec(version: str) -> None:
    isvc = next(o for o in render(KSERVE) if o["kind"] == "InferenceService")
    predictor = isvc["spec"]["predictor"]
    frameworks = INFERENCE_SERVICE_FRAMEWORK_FIELDS & predictor.keys()
    assert not frameworks, f"custom container predictor must not also name a framework: {frameworks}"
    pod_spec = {k: v for k, v in predictor.items() if k not in INFERENCE_SERVICE_COMPONENT_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lstm-serve-predictor"}, "spec": pod_spec}
    _validate_builtin(pod, version)
    container = predictor["containers"][0]
    assert container["name"] == "kserve-container"
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("PROTOCOL") == "v2", "KServe reads a custom predictor's protocol from env PROTOCOL"
