"""The KEDA ScaledObject (engine keda), with a Prometheus trigger on Triton's own metrics."""

from __future__ import annotations

import copy
from typing import Any

from modeldeploy.api import Autoscaling, AutoscalingMetric, ModelDeployment
from modeldeploy.kinds import DEPLOYMENT, SCALED_OBJECT
from modeldeploy.labels import Owner, child_manifest
from modeldeploy.manifests.common import owner_of
from modeldeploy.manifests.horizontalpodautoscaler import HPA_BEHAVIOR
from modeldeploy.quantity import plain_number
from modeldeploy.settings import RenderSettings

WINDOW = "1m"
# generationPressure's signals and the level of each that counts as 1 (its target): requests waiting for
# a sequence slot, per pod, and the share of the paged KV cache in use. Chosen from the engine's design
# (a few waiting requests mean the continuous batch is full; past 0.8 the cache starts evicting).
# bench/autoscaling --workload generation replays them (bench/README.md): the waiting signal scaled up at
# the first sync, where runningSequences took five; the KV share, a share of full contexts, stayed under
# 0.5 on short requests and never decided.
PRESSURE_SIGNALS: dict[str, tuple[str, str]] = {
    "waiting": ("modeldeploy_generation_requests_waiting", "4"),
    "kvcache": ("modeldeploy_generation_kv_cache_utilization", "0.8"),
}
POLLING_INTERVAL_SECONDS = 15
COOLDOWN_SECONDS = 300


def prometheus_query(metric: AutoscalingMetric, owner: Owner) -> str:
    """A PromQL query over the Service's scraped Triton metrics (labels as a ServiceMonitor sets them)."""
    selector = f'namespace="{owner.namespace}",service="{owner.names.service}"'

    def rate(name: str) -> str:
        return f"sum(rate({name}{{{selector}}}[{WINDOW}]))"

    if metric is AutoscalingMetric.QUEUE_TIME:
        # Average µs a request waited in the queue; no traffic → 0 instead of an empty result.
        return (
            f"{rate('nv_inference_queue_duration_us')} / "
            f"({rate('nv_inference_request_success')} > 0) or vector(0)"
        )
    if metric is AutoscalingMetric.QUEUE_COMPUTE_RATIO:
        return (
            f"{rate('nv_inference_queue_duration_us')} / "
            f"({rate('nv_inference_compute_infer_duration_us')} > 0) or vector(0)"
        )
    if metric is AutoscalingMetric.PENDING_REQUESTS:
        return f"sum(nv_inference_pending_request_count{{{selector}}}) or vector(0)"
    if metric is AutoscalingMetric.RUNNING_SEQUENCES:
        return f"sum(modeldeploy_generation_sequences_running{{{selector}}}) or vector(0)"
    if metric is AutoscalingMetric.GENERATION_PRESSURE:
        raise ValueError("generationPressure is several queries (pressure_signal_query)")
    raise ValueError(f"no Prometheus query for metric {metric.value}")


def pressure_signal_query(signal: str, owner: Owner) -> str:
    """The per-pod average of one of generationPressure's signals."""
    selector = f'namespace="{owner.namespace}",service="{owner.names.service}"'
    return f"avg({PRESSURE_SIGNALS[signal][0]}{{{selector}}}) or vector(0)"


def pressure_triggers(
    autoscaling: Autoscaling, owner: Owner, settings: RenderSettings
) -> list[dict[str, Any]]:
    """generationPressure: one named trigger per signal; `scalingModifiers` combines them."""
    return [
        {
            "type": "prometheus",
            "name": signal,
            "metricType": "Value",
            "metadata": {
                "serverAddress": settings.prometheus_url,
                "query": pressure_signal_query(signal, owner),
                "threshold": target,
                "activationThreshold": "0",
                "ignoreNullValues": "true",
            },
        }
        for signal, (_metric, target) in PRESSURE_SIGNALS.items()
    ]


def pressure_formula() -> str:
    """max(waiting / 4, kvcache / 0.8): whichever signal is further past its own target drives scaling."""
    return (
        "max(" + ", ".join(f"{signal} / {target}" for signal, (_m, target) in PRESSURE_SIGNALS.items()) + ")"
    )


def keda_trigger(autoscaling: Autoscaling, owner: Owner, settings: RenderSettings) -> dict[str, Any]:
    if autoscaling.metric is AutoscalingMetric.CPU:
        return {
            "type": "cpu",
            "metricType": "Utilization",
            "metadata": {"value": plain_number(autoscaling.effective_target)},
        }
    # Queue time and the ratio are already per-request averages over the whole Deployment, so the HPA
    # KEDA drives compares them as a Value; pending requests and running sequences are sums, divided per
    # pod (AverageValue).
    per_pod = (AutoscalingMetric.PENDING_REQUESTS, AutoscalingMetric.RUNNING_SEQUENCES)
    metric_type = "AverageValue" if autoscaling.metric in per_pod else "Value"
    return {
        "type": "prometheus",
        "metricType": metric_type,
        "metadata": {
            "serverAddress": settings.prometheus_url,
            "query": prometheus_query(autoscaling.metric, owner),
            "threshold": plain_number(autoscaling.effective_target),
            # Any queued work wakes a deployment scaled to zero.
            "activationThreshold": "0",
            "ignoreNullValues": "true",
        },
    }


def build_scaled_object(
    md: ModelDeployment, autoscaling: Autoscaling, settings: RenderSettings
) -> dict[str, Any]:
    """The ScaledObject of `md`, whose `spec.autoscaling` is `autoscaling`."""
    owner = owner_of(md)
    spec: dict[str, Any] = {
        "scaleTargetRef": DEPLOYMENT.reference(owner.names.deployment),
        "minReplicaCount": autoscaling.min_replicas,
        "maxReplicaCount": autoscaling.max_replicas,
        "pollingInterval": POLLING_INTERVAL_SECONDS,
        "cooldownPeriod": COOLDOWN_SECONDS,
        "triggers": (
            pressure_triggers(autoscaling, owner, settings)
            if autoscaling.metric is AutoscalingMetric.GENERATION_PRESSURE
            else [keda_trigger(autoscaling, owner, settings)]
        ),
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": copy.deepcopy(HPA_BEHAVIOR)}},
    }
    if autoscaling.metric is AutoscalingMetric.GENERATION_PRESSURE:
        # Both signals are per-pod averages, so the composite is compared as a Value (as a utilisation).
        spec["advanced"]["scalingModifiers"] = {
            "formula": pressure_formula(),
            "target": plain_number(autoscaling.effective_target),
            "activationTarget": "0",
            "metricType": "Value",
        }
    return child_manifest(SCALED_OBJECT, owner, owner.names.autoscaler, spec)
