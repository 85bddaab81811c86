"""Field-structure schemas for the custom resources the manifests use.

kubernetes-validate knows only built-in kinds. These JSON schemas are written down by hand from
the published CRDs, keeping each object's known fields (additionalProperties: false, so a typo
or a field in the wrong place fails) and the types of the fields we use. They check structure,
not everything the operators' CRDs check.

- ServiceMonitor, PrometheusRule: prometheus-operator, monitoring.coreos.com/v1
  (example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,prometheusrules}.yaml)
- InferenceService: KServe, serving.kserve.io/v1beta1 (pkg/apis/serving/v1beta1: PredictorSpec =
  framework specs + inline PodSpec + inline ComponentExtensionSpec). The PodSpec part of the
  predictor is validated separately with kubernetes-validate as a core/v1 PodSpec.
"""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_STR_MAP = {"type": "object", "additionalProperties": _STR}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}

_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _STR,
        "namespace": _STR,
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
}

_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _STR_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": _STR,
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": _STR},
                },
            },
        },
    },
}


def _resource(group_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": group_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        # Endpoint fields of monitoring.coreos.com/v1 ServiceMonitor.
        "port": _STR,
        "targetPort": {"type": ["string", "integer"]},
        "path": _STR,
        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
        "params": {"type": "object"},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "honorLabels": _BOOL,
        "honorTimestamps": _BOOL,
        "trackTimestampsStaleness": _BOOL,
        "enableHttp2": _BOOL,
        "followRedirects": _BOOL,
        "filterRunning": _BOOL,
        "relabelings": {"type": "array", "items": {"type": "object"}},
        "metricRelabelings": {"type": "array", "items": {"type": "object"}},
        "tlsConfig": {"type": "object"},
        "authorization": {"type": "object"},
        "basicAuth": {"type": "object"},
        "oauth2": {"type": "object"},
        "bearerTokenSecret": {"type": "object"},
        "proxyUrl": _STR,
    },
}

SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector", "endpoints"],
        "properties": {
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"any": _BOOL, "matchNames": {"type": "array", "items": _STR}},
            },
            "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            "jobLabel": _STR,
            "targetLabels": {"type": "array", "items": _STR},
            "podTargetLabels": {"type": "array", "items": _STR},
            "sampleLimit": _INT,
            "targetLimit": _INT,
            "scrapeProtocols": {"type": "array", "items": _STR},
            "attachMetadata": {"type": "object"},
            "scrapeClass": _STR,
        },
    },
)

_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": _STR,
        "record": _STR,
        "expr": {"type": ["string", "integer"]},
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
}

PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": _DURATION,
                        "query_offset": _DURATION,
                        "limit": _INT,
                        "partial_response_strategy": _STR,
                        "labels": _STR_MAP,
                        "rules": {"type": "array", "items": _RULE},
                    },
                },
            }
        },
    },
)

# PredictorSpec = one framework spec, or a custom PodSpec (inline), + ComponentExtensionSpec
# (inline). The PodSpec keys are checked by kubernetes-validate; here: which keys may appear.
INFERENCE_SERVICE_COMPONENT_FIELDS = frozenset(
    {
        "minReplicas",
        "maxReplicas",
        "scaleTarget",
        "scaleMetric",
        "scaleMetricType",
        "containerConcurrency",
        "timeout",
        "canaryTrafficPercent",
        "logger",
        "batcher",
        "labels",
        "annotations",
        "deploymentStrategy",
        "autoScaling",
    }
)
INFERENCE_SERVICE_FRAMEWORK_FIELDS = frozenset(
    {
        "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml",
        "lightgbm", "paddle", "model", "storageUris", "workerSpec",
    }
)

INFERENCE_SERVICE = _resource(
    "serving.kserve.io/v1beta1",
    "InferenceService",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["predictor"],
        "properties": {
            "predictor": {
                "type": "object",
                "properties": {
                    "minReplicas": {"type": "integer", "minimum": 0},
                    "maxReplicas": {"type": "integer", "minimum": 0},
                    "scaleTarget": _INT,
                    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                    "containerConcurrency": _INT,
                    "timeout": _INT,
                    "canaryTrafficPercent": _INT,
                    "labels": _STR_MAP,
                    "annotations": _STR_MAP,
                    "containers": {"type": "array", "minItems": 1},
                },
            },
            "transformer": {"type": "object"},
            "explainer": {"type": "object"},
        },
    },
)

SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("serving.kserve.io/v1beta1", "InferenceService"): INFERENCE_SERVICE,
}
