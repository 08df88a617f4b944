"""Verdicts on autoscaling: `AutoscalerReady` (the HorizontalPodAutoscaler or KEDA ScaledObject is set up
and reads its metric) and `ScalingReady` (scaling works now: also not held at its maximum while the metric
asks for more, and not on KEDA's fallback replicas). Both quote the autoscaler's own conditions; neither
turns Ready off for a model that serves (status.py: a failed AutoscalerReady degrades the phase only).
"""

from __future__ import annotations

from typing import Any

from modeldeploy.api import AutoscalingEngine, ModelDeployment
from modeldeploy.observations import Observed, conditions_of, name_of
from modeldeploy.verdict import FALSE, TRUE, UNKNOWN, Verdict

AUTOSCALER_READY = "AutoscalerReady"
SCALING_READY = "ScalingReady"


def autoscaler_verdict(md: ModelDeployment, observed: Observed) -> Verdict:
    autoscaling = md.spec.autoscaling
    if autoscaling is None:
        return Verdict(AUTOSCALER_READY, TRUE, "FixedReplicas", f"replicas fixed at {md.spec.replicas}")
    if autoscaling.engine is AutoscalingEngine.KEDA:
        if not observed.keda_installed:
            return Verdict(
                AUTOSCALER_READY,
                FALSE,
                "KedaNotInstalled",
                "spec.autoscaling.engine keda needs KEDA (CRD scaledobjects.keda.sh not found)",
            )
        if observed.autoscaler is None:
            return Verdict(AUTOSCALER_READY, UNKNOWN, "Pending", "ScaledObject not created yet")
        ready = conditions_of(observed.autoscaler).get("Ready")
        if ready is None:
            return Verdict(
                AUTOSCALER_READY, UNKNOWN, "Pending", "KEDA has not reported on the ScaledObject yet"
            )
        if ready.get("status") == "True":
            return Verdict(AUTOSCALER_READY, TRUE, "ScaledObjectReady", str(ready.get("message") or "ready"))
        return Verdict(
            AUTOSCALER_READY,
            FALSE,
            str(ready.get("reason") or "ScaledObjectNotReady"),
            str(ready.get("message", "")),
        )
    if observed.autoscaler is None:
        return Verdict(AUTOSCALER_READY, UNKNOWN, "Pending", "HorizontalPodAutoscaler not created yet")
    conditions = conditions_of(observed.autoscaler)
    for kind in ("AbleToScale", "ScalingActive"):
        condition = conditions.get(kind)
        if condition is not None and condition.get("status") != "True":
            return Verdict(
                AUTOSCALER_READY,
                FALSE,
                str(condition.get("reason") or f"Not{kind}"),
                str(condition.get("message", "")),
            )
    if "ScalingActive" not in conditions:
        return Verdict(
            AUTOSCALER_READY, UNKNOWN, "Pending", "the HorizontalPodAutoscaler has not reported yet"
        )
    return Verdict(
        AUTOSCALER_READY, TRUE, "ScalingActive", str(conditions["ScalingActive"].get("message") or "scaling")
    )


def _quoted(kind: str, obj: dict[str, Any] | None, condition: dict[str, Any]) -> str:
    """An autoscaler's condition in its own words: `HorizontalPodAutoscaler bert: ScalingLimited=True
    (TooManyReplicas): the desired replica count is more than the maximum replica count`."""
    said = f"{condition.get('type')}={condition.get('status')} ({condition.get('reason') or 'no reason'})"
    message = " ".join(str(condition.get("message") or "").split())
    return f"{kind} {name_of(obj)}: {said}" + (f": {message}" if message else "")


def _at_maximum(kind: str, hpa: dict[str, Any] | None) -> Verdict | None:
    """ScalingReady=False/TooManyReplicas: held at maxReplicas while the metric asks for more."""
    limited = conditions_of(hpa).get("ScalingLimited") or {}
    if limited.get("status") != "True" or limited.get("reason") != "TooManyReplicas":
        return None
    maximum = ((hpa or {}).get("spec") or {}).get("maxReplicas")
    at = f"at its maximum of {maximum} replicas" if maximum is not None else "at its maximum"
    quoted = _quoted(kind, hpa, limited)
    message = f"{at} while the metric asks for more; raise spec.autoscaling.maxReplicas. {quoted}"
    return Verdict(SCALING_READY, FALSE, "TooManyReplicas", message)


def scaling_verdict(md: ModelDeployment, observed: Observed, autoscaler: Verdict) -> Verdict:
    """ScalingReady: AutoscalerReady's verdict (in the autoscaler's words), then the limits it hits."""
    autoscaling = md.spec.autoscaling
    if autoscaling is None or autoscaler.status is not TRUE:
        if autoscaling is not None and autoscaler.status is FALSE and observed.autoscaler is not None:
            kind = (
                "ScaledObject" if autoscaling.engine is AutoscalingEngine.KEDA else "HorizontalPodAutoscaler"
            )
            failing = next(
                (
                    c
                    for c in conditions_of(observed.autoscaler).values()
                    if c.get("reason") == autoscaler.reason and c.get("status") != "True"
                ),
                None,
            )
            if failing is not None:
                return Verdict(
                    SCALING_READY, FALSE, autoscaler.reason, _quoted(kind, observed.autoscaler, failing)
                )
        return Verdict(SCALING_READY, autoscaler.status, autoscaler.reason, autoscaler.message)
    conditions = conditions_of(observed.autoscaler)
    if autoscaling.engine is AutoscalingEngine.KEDA:
        fallback = conditions.get("Fallback") or {}
        if fallback.get("status") == "True":
            message = "KEDA cannot read the metric and holds the fallback replicas; " + _quoted(
                "ScaledObject", observed.autoscaler, fallback
            )
            return Verdict(SCALING_READY, FALSE, str(fallback.get("reason") or "FallbackExists"), message)
        limited = _at_maximum("HorizontalPodAutoscaler", observed.keda_hpa)
        if limited is not None:
            return limited
        active = conditions.get("Active") or conditions.get("Ready") or {}
        return Verdict(
            SCALING_READY, TRUE, "ScalingActive", _quoted("ScaledObject", observed.autoscaler, active)
        )
    limited = _at_maximum("HorizontalPodAutoscaler", observed.autoscaler)
    if limited is not None:
        return limited
    active = conditions.get("ScalingActive") or {}
    return Verdict(
        SCALING_READY, TRUE, "ScalingActive", _quoted("HorizontalPodAutoscaler", observed.autoscaler, active)
    )
