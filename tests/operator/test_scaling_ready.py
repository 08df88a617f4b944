"""ScalingReady: read from the HorizontalPodAutoscaler's conditions (AbleToScale, ScalingActive,
ScalingLimited) or the KEDA ScaledObject's (Ready, Active, Fallback) and the HPA KEDA made; quoting the
autoscaler, and never turning Ready off for a model that serves. The conditions below are what the HPA
controller and KEDA write (their reasons and messages as in their sources); tests/e2e shows a real HPA
controller writing them."""

from __future__ import annotations

from typing import Any

from md_fixtures import md_of
from test_status import deployment, digest_of, pod

from modeldeploy.api import ModelDeploymentStatus, Phase
from modeldeploy.observations import Observed
from modeldeploy.status import compute_status

T0 = "2030-01-01T00:00:00Z"
HPA_SPEC = {"autoscaling": {"engine": "hpa", "minReplicas": 1, "maxReplicas": 4}}
KEDA_SPEC = {"autoscaling": {"engine": "keda", "minReplicas": 1, "maxReplicas": 4}}


def cond(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


ABLE = cond(
    "AbleToScale",
    "True",
    "ReadyForNewScale",
    "recommended size matches current size",
)
ACTIVE = cond(
    "ScalingActive",
    "True",
    "ValidMetricFound",
    "the HPA was able to successfully calculate a replica count from pods "
    "metric nv_inference_queue_duration_us",
)
WITHIN = cond(
    "ScalingLimited",
    "False",
    "DesiredWithinRange",
    "the desired count is within the acceptable range",
)
NO_METRIC = cond(
    "ScalingActive",
    "False",
    "FailedGetPodsMetric",
    "the HPA was unable to compute the replica count: unable to get metric "
    "nv_inference_queue_duration_us: no metrics returned from custom "
    "metrics API",
)
AT_MAX = cond(
    "ScalingLimited",
    "True",
    "TooManyReplicas",
    "the desired replica count is more than the maximum replica count",
)


def hpa(*conditions: dict[str, Any], name: str = "bert") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"maxReplicas": 4},
        "status": {"conditions": list(conditions)},
    }


def scaled_object(*conditions: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "bert"},
        "status": {"hpaName": "keda-hpa-bert", "conditions": list(conditions)},
    }


def status_of(spec: dict[str, Any], **observed: Any) -> ModelDeploymentStatus:
    md = md_of(spec)
    digest = digest_of(md)
    seen = Observed(digest=digest, deployment=deployment(digest), pods=[pod(digest), pod(digest)], **observed)
    return compute_status(md, seen, None, T0)


def condition(status: ModelDeploymentStatus, kind: str) -> tuple[str, str, str]:
    (found,) = [c for c in status.conditions or [] if c.type == kind]
    return found.status.value, found.reason, found.message


def test_a_working_hpa_is_scaling_ready() -> None:
    status = status_of(HPA_SPEC, autoscaler=hpa(ABLE, ACTIVE, WITHIN))
    assert condition(status, "ScalingReady") == (
        "True",
        "ScalingActive",
        "HorizontalPodAutoscaler bert: ScalingActive=True (ValidMetricFound): the HPA was able to "
        "successfully calculate a replica count from pods metric nv_inference_queue_duration_us",
    )
    assert condition(status, "Ready")[0] == "True"
    assert status.phase is Phase.READY


def test_a_missing_metric_is_not_scaling_ready_and_the_model_still_serves() -> None:
    status = status_of(HPA_SPEC, autoscaler=hpa(ABLE, NO_METRIC))
    ready, reason, message = condition(status, "ScalingReady")
    assert (ready, reason) == ("False", "FailedGetPodsMetric")
    assert message == (
        "HorizontalPodAutoscaler bert: ScalingActive=False (FailedGetPodsMetric): the HPA was unable to "
        "compute the replica count: unable to get metric nv_inference_queue_duration_us: no metrics returned "
        "from custom metrics API"
    )
    assert condition(status, "Ready")[:2] == ("True", "Serving")
    # What degrades a serving model is shown, the model is not called broken.
    assert (status.phase, status.reason) == (Phase.DEGRADED, "FailedGetPodsMetric")


def test_an_hpa_at_its_maximum_while_the_metric_asks_for_more() -> None:
    status = status_of(HPA_SPEC, autoscaler=hpa(ABLE, ACTIVE, AT_MAX))
    ready, reason, message = condition(status, "ScalingReady")
    assert (ready, reason) == ("False", "TooManyReplicas")
    assert message.startswith("at its maximum of 4 replicas while the metric asks for more; raise ")
    assert message.endswith(
        "HorizontalPodAutoscaler bert: ScalingLimited=True (TooManyReplicas): the desired replica count is "
        "more than the maximum replica count"
    )
    # At capacity is not a broken autoscaler: Ready and the phase stay as they are.
    assert condition(status, "Ready")[0] == "True"
    assert condition(status, "AutoscalerReady")[0] == "True"
    assert status.phase is Phase.READY


def test_at_the_minimum_is_normal() -> None:
    too_few = cond(
        "ScalingLimited",
        "True",
        "TooFewReplicas",
        "the desired replica count is less than the minimum replica count",
    )
    assert condition(status_of(HPA_SPEC, autoscaler=hpa(ABLE, ACTIVE, too_few)), "ScalingReady")[0] == "True"


def test_an_hpa_not_reported_yet_is_unknown() -> None:
    assert condition(status_of(HPA_SPEC, autoscaler=hpa()), "ScalingReady")[:2] == ("Unknown", "Pending")
    assert condition(status_of(HPA_SPEC), "ScalingReady")[:2] == ("Unknown", "Pending")


def test_keda_missing() -> None:
    status = status_of(KEDA_SPEC, keda_installed=False)
    assert condition(status, "ScalingReady")[:2] == ("False", "KedaNotInstalled")
    assert condition(status, "Ready")[0] == "True"


def test_keda_ready_active_fallback_and_its_hpa_at_maximum() -> None:
    ready = cond(
        "Ready",
        "True",
        "ScaledObjectReady",
        "ScaledObject is defined correctly and is ready for scaling",
    )
    active = cond(
        "Active",
        "True",
        "ScalerActive",
        "Scaling is performed because triggers are active",
    )
    fallback = cond(
        "Fallback",
        "True",
        "FallbackExists",
        "At least one trigger is falling back on this scaled object",
    )
    no_fallback = cond(
        "Fallback", "False", "NoFallbackFound", "No fallbacks are active on this scaled object"
    )
    working = status_of(KEDA_SPEC, autoscaler=scaled_object(ready, active, no_fallback))
    assert condition(working, "ScalingReady") == (
        "True",
        "ScalingActive",
        "ScaledObject bert: Active=True (ScalerActive): Scaling is performed because triggers are active",
    )
    falling_back = status_of(KEDA_SPEC, autoscaler=scaled_object(ready, active, fallback))
    state, reason, message = condition(falling_back, "ScalingReady")
    assert (state, reason) == ("False", "FallbackExists")
    assert message.endswith(
        "ScaledObject bert: Fallback=True (FallbackExists): At least one trigger is falling back on this "
        "scaled object"
    )
    at_max = status_of(
        KEDA_SPEC,
        autoscaler=scaled_object(ready, active, no_fallback),
        keda_hpa=hpa(ABLE, ACTIVE, AT_MAX, name="keda-hpa-bert"),
    )
    state, reason, message = condition(at_max, "ScalingReady")
    assert (state, reason) == ("False", "TooManyReplicas")
    assert "HorizontalPodAutoscaler keda-hpa-bert: ScalingLimited=True (TooManyReplicas)" in message
    for status in (falling_back, at_max):
        assert condition(status, "Ready")[0] == "True"
    not_ready = cond(
        "Ready",
        "False",
        "ScaledObjectCheckFailed",
        "ScaledObject doesn't have correct triggers specification",
    )
    broken = status_of(KEDA_SPEC, autoscaler=scaled_object(not_ready))
    assert condition(broken, "ScalingReady") == (
        "False",
        "ScaledObjectCheckFailed",
        "ScaledObject bert: Ready=False (ScaledObjectCheckFailed): ScaledObject doesn't have correct "
        "triggers specification",
    )


def test_fixed_replicas_are_scaling_ready() -> None:
    assert condition(status_of({"replicas": 2}), "ScalingReady")[:2] == ("True", "FixedReplicas")
