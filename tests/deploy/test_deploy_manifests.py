"""The rendered manifests agree with the server and with each other.

Server side: probe paths exist in app.server's routes, ConfigMap keys are app.config.Settings
fields with valid values, ports match. Pod side: restricted security context, grace period
budget, GPU scheduling, spread, PDB, HPA <-> prometheus-adapter.
"""

from __future__ import annotations

import math
import os
import re

import pytest

from .deploy_lib import (
    CPU,
    GPU,
    DOCUMENTED_PROBE_PATHS,
    KSERVE,
    MONITORED,
    OVERLAYS,
    adapter_rules,
    alert_rule_groups,
    one,
    predictor_pod_spec,
    render,
    server_container,
    server_get_status,
    server_routes,
    settings_configmap,
)

PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
RENDERED = (*OVERLAYS, KSERVE)


def _env(directory: str) -> dict[str, str]:
    """The LSTM_SERVE_* environment the server container gets (ConfigMap + env)."""
    objects = render(directory)
    env: dict[str, str] = {}
    container = server_container(predictor_pod_spec(objects))
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(one(objects, "ConfigMap", name)["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


# --------------------------------------------------------------------------------------------
# Settings and ports


@pytest.mark.parametrize("directory", RENDERED)
def test_settings_are_valid_for_the_server(directory: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every LSTM_SERVE_* key is a Settings field, and Settings accepts the values."""
    from app.config import ENV_PREFIX, Settings

    env = {k: v for k, v in _env(directory).items() if k.startswith(ENV_PREFIX)}
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(set(env) - fields)
    assert not unknown, f"k8s/{directory}: not server settings (typo, or renamed in app/config.py): {unknown}"
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    if "LSTM_SERVE_MODEL_REPOSITORY" in env:
        assert str(settings.model_repository) == "/models", "the image bakes models in at /models"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_port_names_agree(overlay: str) -> None:
    """container port name == Service port name == ServiceMonitor endpoint port, and the number
    is the server's LSTM_SERVE_PORT; the gRPC port likewise (LSTM_SERVE_GRPC_PORT)."""
    objects = render(overlay)
    container = server_container(predictor_pod_spec(objects))
    cports = {p["name"]: p for p in container["ports"]}
    service = one(objects, "Service")
    sports = {p["name"]: p for p in service["spec"]["ports"]}
    assert cports.keys() == sports.keys() == {"http", "grpc"}
    cport, sport = cports["http"], sports["http"]
    assert sports["grpc"]["targetPort"] in ("grpc", cports["grpc"]["containerPort"])
    assert cports["grpc"]["containerPort"] == int(_env(overlay).get("LSTM_SERVE_GRPC_PORT", "8001")) == 8001
    monitor = one(render(MONITORED), "ServiceMonitor")  # the optional component's
    (endpoint,) = monitor["spec"]["endpoints"]
    assert cport["name"] == sport["name"] == endpoint["port"] == "http"
    assert sport["targetPort"] in ("http", cport["containerPort"])
    assert endpoint["path"] == "/metrics"
    assert cport["containerPort"] == int(_env(overlay).get("LSTM_SERVE_PORT", "8000")) == 8000
    # The Service and the ServiceMonitor select the Deployment's pods.
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


@pytest.mark.parametrize("directory", RENDERED)
def test_no_service_links(directory: str) -> None:
    """A Service named lstm-serve would inject LSTM_SERVE_PORT=tcp://... (the settings prefix)."""
    assert predictor_pod_spec(render(directory)).get("enableServiceLinks") is False


# --------------------------------------------------------------------------------------------
# Probes


@pytest.mark.parametrize("directory", RENDERED)
def test_probes_use_the_kserve_v2_health_paths(directory: str) -> None:
    container = server_container(predictor_pod_spec(render(directory)))
    paths = {probe: container[probe]["httpGet"]["path"] for probe in PROBES}
    assert paths["livenessProbe"] == "/v2/health/live"
    assert paths["readinessProbe"] == "/v2/health/ready"
    assert set(paths.values()) <= DOCUMENTED_PROBE_PATHS
    ports = {container[p]["httpGet"]["port"] for p in PROBES}
    assert ports <= {"http", container["ports"][0]["name"], container["ports"][0]["containerPort"]}


@pytest.mark.parametrize("directory", RENDERED)
def test_probe_paths_exist_in_the_server(directory: str) -> None:
    routes = server_routes()  # skips while app.server is not written
    container = server_container(predictor_pod_spec(render(directory)))
    for probe in PROBES:
        path = container[probe]["httpGet"]["path"]
        assert path in routes, f"{probe} path {path} is not a route of app.server.create_app(): {sorted(routes)}"
        status = server_get_status(path)
        assert status not in (404, 405), f"GET {path} -> {status}: not served to the kubelet's probe"
    assert "/metrics" in routes


@pytest.mark.parametrize("directory", RENDERED)
def test_startup_probe_covers_model_load_and_warmup(directory: str) -> None:
    container = server_container(predictor_pod_spec(render(directory)))
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= 120, f"startup budget {budget}s is too short for model load + warm-up"
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 20, "liveness must tolerate a busy moment"


# --------------------------------------------------------------------------------------------
# Termination


@pytest.mark.parametrize("directory", RENDERED)
def test_grace_period_covers_prestop_and_drain(directory: str) -> None:
    pod = predictor_pod_spec(render(directory))
    container = server_container(pod)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    prestop = float(command[1])
    drain = float(_env(directory).get("LSTM_SERVE_DRAIN_TIMEOUT_S", "20"))
    grace = pod["terminationGracePeriodSeconds"]
    assert prestop >= 1, "a preStop pause lets endpoint removal propagate before SIGTERM"
    assert grace > prestop + drain, f"terminationGracePeriodSeconds {grace} <= preStop {prestop} + drain {drain}"


# --------------------------------------------------------------------------------------------
# Security


@pytest.mark.parametrize("directory", RENDERED)
def test_restricted_security_context(directory: str) -> None:
    pod = predictor_pod_spec(render(directory))
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert isinstance(psc["runAsUser"], int) and psc["runAsUser"] > 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    container = server_container(pod)
    csc = container["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert not csc.get("capabilities", {}).get("add")
    assert not csc.get("privileged")
    assert csc.get("runAsNonRoot", True) is True and csc.get("runAsUser", psc["runAsUser"]) > 0
    assert csc.get("seccompProfile", psc["seccompProfile"])["type"] == "RuntimeDefault"
    # The only writable place: an emptyDir at /tmp. Models are read-only.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    if "/models" in mounts:
        assert mounts["/models"].get("readOnly") is True
    for volume in volumes.values():
        assert "hostPath" not in volume


def test_run_as_user_is_the_image_user() -> None:
    from .deploy_lib import stage_instructions, stages

    (user,) = [i.args for i in stage_instructions(stages()[-1]) if i.keyword == "USER"]
    uid = int(user.split(":")[0])
    for directory in RENDERED:
        assert predictor_pod_spec(render(directory))["securityContext"]["runAsUser"] == uid


# --------------------------------------------------------------------------------------------
# Resources and scheduling


def test_cpu_overlay_resources() -> None:
    objects = render(CPU)
    container = server_container(predictor_pod_spec(objects))
    resources = container["resources"]
    assert "cpu" in resources["requests"] and "memory" in resources["requests"]
    assert "memory" in resources["limits"]
    assert "cpu" not in resources["limits"], "no CPU limit: CFS throttling shows up as tail latency"
    assert "nvidia.com/gpu" not in resources["limits"]
    assert settings_configmap(objects)["LSTM_SERVE_PROVIDERS"] == "cpu"


def test_gpu_overlay_requests_a_gpu_and_cuda() -> None:
    objects = render(GPU)
    pod = predictor_pod_spec(objects)
    container = server_container(pod)
    assert container["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
    assert "memory" in container["resources"]["limits"]
    assert settings_configmap(objects)["LSTM_SERVE_PROVIDERS"] == "cuda"
    assert container["image"].endswith("-gpu"), container["image"]
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
    assert pod.get("nodeSelector") or pod.get("affinity", {}).get("nodeAffinity"), "GPU pods need GPU nodes"


def test_cpu_overlay_uses_the_cpu_image() -> None:
    container = server_container(predictor_pod_spec(render(CPU)))
    assert container["image"].endswith("-cpu"), container["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_spread_over_nodes(overlay: str) -> None:
    objects = render(overlay)
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    constraints = pod["spec"]["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {c["topologyKey"] for c in constraints}
    for c in constraints:
        assert c["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert "replicas" not in deployment["spec"], "the HPA owns replicas"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_disruption_budget(overlay: str) -> None:
    objects = render(overlay)
    pdb = one(objects, "PodDisruptionBudget")
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # Drains make progress (at least one pod may go) and never empty the service.
    assert pdb["spec"].get("maxUnavailable", 0) >= 1 or "minAvailable" in pdb["spec"]
    assert hpa["spec"]["minReplicas"] > pdb["spec"].get("maxUnavailable", 0)


# --------------------------------------------------------------------------------------------
# Autoscaling


def _pods_metric(hpa: dict) -> dict:
    (metric,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    return metric["pods"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_scales_on_a_per_pod_custom_metric(overlay: str) -> None:
    objects = render(overlay)
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", one(objects, "Deployment")["metadata"]["name"])
    pods = _pods_metric(hpa)
    assert pods["target"]["type"] == "AverageValue"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_metric_is_served_by_the_adapter_rule(overlay: str) -> None:
    name = _pods_metric(one(render(overlay), "HorizontalPodAutoscaler"))["metric"]["name"]
    rules = [r for r in adapter_rules() if r["name"]["as"] == name]
    assert len(rules) == 1, f"no prometheus-adapter rule exposes {name!r} (name.as)"
    (rule,) = rules
    # Per-pod metric: the series must map to namespace and pod objects.
    overrides = rule["resources"]["overrides"]
    assert overrides["namespace"]["resource"] == "namespace"
    assert overrides["pod"]["resource"] == "pod"
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
    assert "<<.GroupBy>>" in rule["metricsQuery"]
    series = re.match(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"]).group(1)
    assert re.fullmatch(rule["name"]["matches"], series), "name.matches must match the seriesQuery metric"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_arithmetic_scales_before_saturation(overlay: str) -> None:
    """desired = ceil(current * avg / target): the target sits well below the queue limit, so the
    HPA adds pods before the saturation alert (80% of max_queue_size) or 503s."""
    objects = render(overlay)
    hpa = one(objects, "HorizontalPodAutoscaler")
    target = float(_pods_metric(hpa)["target"]["averageValue"])
    settings = settings_configmap(objects)
    max_queue = int(settings.get("LSTM_SERVE_MAX_QUEUE_SIZE", "256"))
    max_batch = int(settings.get("LSTM_SERVE_MAX_BATCH_SIZE", "32"))
    assert 1 <= target <= max_batch, "scale once about a batch waits per pod, not later"
    assert target < 0.8 * max_queue
    current = hpa["spec"]["minReplicas"]
    # At the saturation threshold the HPA wants many more pods than it has.
    assert math.ceil(current * (0.8 * max_queue) / target) > current
    # Idle (nothing queued): stays at minReplicas.
    assert max(hpa["spec"]["minReplicas"], math.ceil(current * 0 / target)) == hpa["spec"]["minReplicas"]


def test_cpu_overlay_also_scales_on_cpu() -> None:
    hpa = one(render(CPU), "HorizontalPodAutoscaler")
    resources = [m["resource"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert [r["name"] for r in resources] == ["cpu"]
    assert resources[0]["target"]["type"] == "Utilization"


def test_queue_saturation_alert_threshold_matches_the_base_queue_size() -> None:
    """LstmServeQueueSaturated fires at 80% of the base ConfigMap's LSTM_SERVE_MAX_QUEUE_SIZE."""
    from .deploy_lib import K8S

    base_env = dict(
        line.split("=", 1)
        for line in (K8S / "base" / "lstm-serve.env").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    max_queue = int(base_env["LSTM_SERVE_MAX_QUEUE_SIZE"])
    rules = {r["alert"]: r for g in alert_rule_groups() for r in g["rules"]}
    threshold = float(re.search(r">\s*([0-9.]+)\s*$", rules["LstmServeQueueSaturated"]["expr"].strip()).group(1))
    assert threshold == pytest.approx(0.8 * max_queue)
