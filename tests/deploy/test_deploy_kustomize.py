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
import yaml

from .crd_schemas import (
    INFERENCE_SERVICE_COMPONENT_FIELDS,
    INFERENCE_SERVICE_FRAMEWORK_FIELDS,
    SCHEMAS,
)
from .deploy_lib import BASE, CPU, K8S, KSERVE, KSERVE_GRPC, MONITORED, OVERLAYS, render

K8S_VERSIONS = sorted({"1.29.0", kubernetes_validate.latest_version()})
RENDERED = (BASE, *OVERLAYS, MONITORED, KSERVE, KSERVE_GRPC)
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def _builtin(obj: dict) -> bool:
    group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
    return "." not in group or group.endswith(".k8s.io")


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


@pytest.mark.parametrize("directory", (BASE, *OVERLAYS))
def test_base_and_overlays_apply_on_a_plain_cluster(directory: str) -> None:
    """No custom resources: `kubectl apply -k` works without the Prometheus Operator's CRDs."""
    objects = render(directory)
    custom = [(o["apiVersion"], o["kind"]) for o in objects if not _builtin(o)]
    assert not custom, f"k8s/{directory} needs CRDs a plain cluster lacks: {custom}"
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert "InferenceService" not in kinds, "the KServe variant is opt-in (k8s/kserve), not in the overlays"


def test_the_monitoring_component_adds_the_operator_objects() -> None:
    plain = {(o["kind"], o["metadata"]["name"]) for o in render(CPU)}
    monitored = {(o["kind"], o["metadata"]["name"]) for o in render(MONITORED)}
    assert {k for k, _ in monitored - plain} == OPERATOR_KINDS | {"ConfigMap"}  # + the Grafana dashboard
    assert plain <= monitored


@pytest.mark.parametrize("directory", (*OVERLAYS, KSERVE))
def test_the_image_reference_is_one_setting(directory: str) -> None:
    """The image is named once, in the directory's own `images:` (none in the base), and the
    rendered pod uses exactly it."""
    images = yaml.safe_load((K8S / directory / "kustomization.yaml").read_text())["images"]
    assert len(images) == 1 and images[0]["name"] == "lstm-serve"
    assert "images" not in yaml.safe_load((K8S / BASE / "kustomization.yaml").read_text())
    want = f"{images[0]['newName']}:{images[0]['newTag']}"
    pods = [o["spec"]["template"]["spec"] if o["kind"] == "Deployment" else o["spec"]["predictor"]
            for o in render(directory) if o["kind"] in ("Deployment", "InferenceService")]
    assert [c["image"] for p in pods for c in p["containers"]] == [want]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("directory", RENDERED)
def test_builtin_objects_validate_strict(directory: str, version: str) -> None:
    checked = 0
    for obj in render(directory):
        if (obj["apiVersion"], obj["kind"]) in SCHEMAS:
            continue  # custom resources: test_custom_resources_match_crd_structure
        _validate_builtin(obj, version)
        checked += 1
    if directory in (BASE, *OVERLAYS):
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
        if _builtin(obj):
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


def test_the_grpc_v2_inference_service_routes_to_the_grpc_port() -> None:
    """KServe routes to the first container port; `h2c` makes it speak gRPC to it, on the
    port the server's gRPC listens on by default (app.config grpc_port)."""
    from app.config import Settings

    isvc = next(o for o in render(KSERVE_GRPC) if o["kind"] == "InferenceService")
    container = isvc["spec"]["predictor"]["containers"][0]
    first = container["ports"][0]
    assert (first["name"], first["containerPort"]) == ("h2c", Settings.model_fields["grpc_port"].default)
    assert {e["name"]: e.get("value") for e in container["env"]}["PROTOCOL"] == "grpc-v2"


def test_the_service_exposes_the_grpc_port() -> None:
    from app.config import Settings

    service = next(o for o in render(BASE) if o["kind"] == "Service")
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert (grpc["port"], grpc["targetPort"], grpc["appProtocol"]) == (8001, "grpc", "grpc")
    pod = next(o for o in render(BASE) if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
    assert ports["grpc"] == Settings.model_fields["grpc_port"].default
