"""Regenerate k8s/monitoring/prometheusrule.yaml from k8s/monitoring/alerts.rules.yml.

The plain rules file is the source (promtool checks and unit-tests it); the PrometheusRule is
what the Prometheus Operator loads. ``test_monitoring.py`` fails when the two differ.

    python tests/deploy/sync_monitoring.py
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "k8s" / "monitoring" / "alerts.rules.yml"
PROMETHEUS_RULE = ROOT / "k8s" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from alerts.rules.yml by `python tests/deploy/sync_monitoring.py`: edit that file.
# The same alert groups as a Prometheus Operator PrometheusRule (CRD monitoring.coreos.com/v1).
# Many installs only load rules carrying their release label (kube-prometheus-stack:
# `release: <name>`, see Prometheus.spec.ruleSelector): add it in your overlay if yours does.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "lstm-serve",
            "labels": {"app.kubernetes.io/name": "lstm-serve"},
        },
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100)


def main() -> None:
    PROMETHEUS_RULE.write_text(render())
    print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
