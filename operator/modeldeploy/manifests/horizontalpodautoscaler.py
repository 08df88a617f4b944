"""The autoscaling/v2 HorizontalPodAutoscaler (engine hpa).

Triton's metrics reach the HPA as Pods metrics through prometheus-adapter; the chart ships the adapter
rules that serve these names.
"""

from __future__ import annotations

import copy
from typing import Any

from modeldeploy.api import Autoscaling, AutoscalingMetric, ModelDeployment
from modeldeploy.kinds import DEPLOYMENT, HORIZONTAL_POD_AUTOSCALER
from modeldeploy.labels import child_manifest
from modeldeploy.manifests.common import owner_of
from modeldeploy.quantity import parse_quantity

# Model pods are expensive to start: scale down slowly, one pod a minute once five minutes of lower
# recommendations have passed. The queue metrics read near zero on an over-provisioned Deployment, so
# Kubernetes' default (all the way down at once) drops below the load and scales up again; one pod at a
# time settles near the right count instead (bench/autoscaling replays the HPA with this behavior). The
# KEDA ScaledObject hands the same behavior to the HPA it creates.
HPA_BEHAVIOR: dict[str, Any] = {
    "scaleDown": {
        "stabilizationWindowSeconds": 300,
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
    },
}

POD_METRIC_NAMES: dict[AutoscalingMetric, str] = {
    AutoscalingMetric.QUEUE_TIME: "modeldeploy_queue_time_us",
    AutoscalingMetric.QUEUE_COMPUTE_RATIO: "modeldeploy_queue_compute_ratio",
    AutoscalingMetric.PENDING_REQUESTS: "modeldeploy_pending_requests",
    AutoscalingMetric.RUNNING_SEQUENCES: "modeldeploy_running_sequences",
}


def cpu_utilization_target(autoscaling: Autoscaling) -> int:
    """The cpu target as a whole percentage (checks.py rejects anything else before we get here)."""
    return int(parse_quantity(autoscaling.effective_target))


def hpa_metric(autoscaling: Autoscaling) -> dict[str, Any]:
    if autoscaling.metric is AutoscalingMetric.CPU:
        return {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": cpu_utilization_target(autoscaling)},
            },
        }
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": POD_METRIC_NAMES[autoscaling.metric]},
            "target": {"type": "AverageValue", "averageValue": autoscaling.effective_target},
        },
    }


def build_horizontal_pod_autoscaler(md: ModelDeployment, autoscaling: Autoscaling) -> dict[str, Any]:
    """The HPA of `md`, whose `spec.autoscaling` is `autoscaling`."""
    owner = owner_of(md)
    spec = {
        "scaleTargetRef": DEPLOYMENT.reference(owner.names.deployment),
        "minReplicas": autoscaling.min_replicas,
        "maxReplicas": autoscaling.max_replicas,
        "metrics": [hpa_metric(autoscaling)],
        "behavior": copy.deepcopy(HPA_BEHAVIOR),
    }
    return child_manifest(HORIZONTAL_POD_AUTOSCALER, owner, owner.names.autoscaler, spec)
