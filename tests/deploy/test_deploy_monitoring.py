"""Alerts, dashboard and prometheus-adapter rule: valid, in sync, and using only metrics the
server exposes (a renamed metric fails here instead of silently emptying a panel or an alert)."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from . import sync_monitoring
from .deploy_lib import (
    DOCUMENTED_METRIC_NAMES,
    MONITORED,
    MONITORING,
    alert_rule_groups,
    dashboard,
    dashboard_queries,
    exposed_metric_names,
    find_tool,
    one,
    render,
    used_metric_names,
)


def _promtool() -> str:
    promtool = find_tool("promtool")
    if promtool is None:
        pytest.skip("promtool not found (Debian/Ubuntu package `prometheus`; .ci/run installs it)")
    return promtool


def test_promtool_check_rules() -> None:
    proc = subprocess.run(
        [_promtool(), "check", "rules", "alerts.rules.yml"],
        cwd=MONITORING, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_alert_unit_tests() -> None:
    """alerts.test.yml: each alert fires on synthetic bad series, healthy ones stay silent."""
    proc = subprocess.run(
        [_promtool(), "test", "rules", "alerts.test.yml"],
        cwd=MONITORING, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((MONITORING / "alerts.test.yml").read_text())
    fired = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {r["alert"] for g in alert_rule_groups() for r in g["rules"] if "alert" in r}
    assert alerts <= fired, f"alerts never shown firing in alerts.test.yml: {sorted(alerts - fired)}"
    for g in alert_rule_groups():
        for r in g["rules"]:
            assert r["labels"]["severity"] in {"page", "warning", "info"}
            assert r["annotations"]["summary"] and r["annotations"]["description"]


def test_prometheus_rule_matches_the_plain_rules_file() -> None:
    """The PrometheusRule is generated from alerts.rules.yml; they must not drift."""
    generated = (MONITORING / "prometheusrule.yaml").read_text()
    assert yaml.safe_load(generated)["spec"]["groups"] == alert_rule_groups(), (
        "k8s/monitoring/prometheusrule.yaml differs from alerts.rules.yml: run "
        "`python tests/deploy/sync_monitoring.py`"
    )
    assert generated == sync_monitoring.render(), "run `python tests/deploy/sync_monitoring.py`"


def test_the_monitoring_component_ships_the_rules_and_the_dashboard() -> None:
    objects = render(MONITORED)
    rule = one(objects, "PrometheusRule")
    assert rule["spec"]["groups"] == alert_rule_groups()
    dash_cm = one(objects, "ConfigMap", "lstm-serve-dashboard")
    assert dash_cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    import json

    assert json.loads(dash_cm["data"]["lstm-serve-dashboard.json"]) == dashboard()


def test_dashboard_structure() -> None:
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["type"] == "query"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", f"panel {p['title']!r} must use the datasource variable"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
    queries = "\n".join(dashboard_queries(dash))
    # The panels the runbook relies on.
    for needle in (
        "histogram_quantile(0.5, sum by (model, le) (rate(lstm_serve_request_duration_seconds_bucket",
        "histogram_quantile(0.9, sum by (model, le) (rate(lstm_serve_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (model, le) (rate(lstm_serve_request_duration_seconds_bucket",
        "lstm_serve_queue_duration_seconds_bucket",
        "lstm_serve_inference_duration_seconds_bucket",
        "rate(lstm_serve_requests_total",
        "rate(lstm_serve_sequences_total",
        "lstm_serve_batch_size_bucket",
        "lstm_serve_queue_depth",
        "lstm_serve_padding_ratio_sum",
        "sum by (model, code)",
        "lstm_serve_inflight_requests",
    ):
        assert needle in queries, f"dashboard lacks {needle!r}"
    assert 'model=~"$model"' in queries


def test_monitoring_uses_only_documented_metrics() -> None:
    """Runs before app.metrics exists: against the documented metric list."""
    for path, names in used_metric_names().items():
        unknown = names - DOCUMENTED_METRIC_NAMES
        assert not unknown, f"{path} uses metrics the server does not document: {sorted(unknown)}"


def test_monitoring_uses_only_metrics_the_server_exposes() -> None:
    """The drift test proper: every lstm_serve_* sample name in the alerts, the dashboard and the
    adapter rule is in app.metrics.exposed_metric_names()."""
    exposed = exposed_metric_names()  # skips while app.metrics is not written
    for path, names in used_metric_names().items():
        assert names, f"{path}: no lstm_serve_* metric found (parser broken?)"
        missing = names - exposed
        assert not missing, f"{path} uses metrics app.metrics does not expose: {sorted(missing)}"

