"""The Kubernetes HorizontalPodAutoscaler's replica calculation (autoscaling/v2, with spec.behavior).

Follows pkg/controller/podautoscaler: for a Pods metric with an AverageValue target,
desired = ceil(ready pods * current / target), unless |current / target - 1| <= tolerance (0.1), in which
case the count stays. The recommendation is then stabilised (scale-down: the highest recommendation of
the last `scale_down_stabilization_s`, 300 s by default; scale-up: the lowest of the last
`scale_up_stabilization_s`, 0 s by default) and rate-limited by the policies (Kubernetes' defaults:
scale-up the larger of +100% and +4 pods per 15 s, scale-down -100% per 15 s; the operator's HPAs
scale down one pod per 60 s), then clamped to [min, max] replicas.
All durations can be scaled together so that a short benchmark run behaves like a long real one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class HpaBehavior:
    """spec.behavior of an HPA; the defaults are Kubernetes' own. Each set policy allows that much change
    per its period and the most permissive one applies (selectPolicy: Max, the default)."""

    tolerance: float = 0.1
    scale_up_stabilization_s: float = 0.0
    scale_down_stabilization_s: float = 300.0
    scale_up_percent: float = 100.0
    scale_up_pods: int = 4
    scale_up_period_s: float = 15.0
    scale_down_percent: float | None = 100.0
    scale_down_pods: int | None = None
    scale_down_period_s: float = 15.0

    @classmethod
    def from_manifest(cls, behavior: Mapping[str, Any]) -> HpaBehavior:
        """The behavior an HPA manifest's `spec.behavior` sets (only `scaleDown` is read; policies given
        replace the defaults, as in Kubernetes)."""
        result = cls()
        scale_down = behavior.get("scaleDown") or {}
        if "stabilizationWindowSeconds" in scale_down:
            result = replace(
                result, scale_down_stabilization_s=float(scale_down["stabilizationWindowSeconds"])
            )
        policies = scale_down.get("policies")
        if policies:
            periods = {int(policy["periodSeconds"]) for policy in policies}
            kinds = {policy["type"] for policy in policies}
            if (
                len(periods) != 1
                or len(kinds) != len(policies)
                or scale_down.get("selectPolicy", "Max") != "Max"
            ):
                raise ValueError(f"unsupported scaleDown policies: {scale_down}")
            by_kind = {policy["type"]: policy["value"] for policy in policies}
            result = replace(
                result,
                scale_down_percent=float(by_kind["Percent"]) if "Percent" in by_kind else None,
                scale_down_pods=int(by_kind["Pods"]) if "Pods" in by_kind else None,
                scale_down_period_s=float(periods.pop()),
            )
        return result

    def scaled(self, factor: float) -> HpaBehavior:
        """The same behavior with every duration multiplied by `factor`."""
        return replace(
            self,
            scale_up_stabilization_s=self.scale_up_stabilization_s * factor,
            scale_down_stabilization_s=self.scale_down_stabilization_s * factor,
            scale_up_period_s=self.scale_up_period_s * factor,
            scale_down_period_s=self.scale_down_period_s * factor,
        )


@dataclass(frozen=True)
class HpaDecision:
    time_s: float
    metric: float
    current_replicas: int
    raw_desired: int  # ceil(current * metric / target), or current inside the tolerance
    stabilized: int
    replicas: int  # after rate limits and min/max: what the HPA writes to the scale subresource


def raw_desired_replicas(current_replicas: int, metric: float, target: float, tolerance: float) -> int:
    """The core formula, with the tolerance band around the target."""
    if target <= 0:
        raise ValueError("the target must be positive")
    ratio = metric / target
    if abs(ratio - 1.0) <= tolerance:
        return current_replicas
    return math.ceil(ratio * current_replicas)


@dataclass
class Hpa:
    target: float
    min_replicas: int = 1
    max_replicas: int = 10
    behavior: HpaBehavior = field(default_factory=HpaBehavior)
    replicas: int = 1
    _recommendations: list[tuple[float, int]] = field(default_factory=list)
    _scale_events: list[tuple[float, int]] = field(default_factory=list)  # (time, replica change)

    def __post_init__(self) -> None:
        if not 0 < self.min_replicas <= self.max_replicas:
            raise ValueError("need 0 < min_replicas <= max_replicas")
        self.replicas = min(max(self.replicas, self.min_replicas), self.max_replicas)

    def _stabilize(self, now: float, desired: int) -> int:
        behavior = self.behavior
        up, down = desired, desired
        for timestamp, recommendation in self._recommendations:
            if timestamp > now - behavior.scale_up_stabilization_s:
                up = min(up, recommendation)
            if timestamp > now - behavior.scale_down_stabilization_s:
                down = max(down, recommendation)
        horizon = now - max(behavior.scale_up_stabilization_s, behavior.scale_down_stabilization_s)
        self._recommendations = [entry for entry in self._recommendations if entry[0] > horizon]
        self._recommendations.append((now, desired))
        return min(max(self.replicas, up), down)

    def _replicas_at_period_start(self, now: float, period_s: float) -> int:
        # Policies count from the replica count at the start of their period.
        return self.replicas - sum(
            change for timestamp, change in self._scale_events if timestamp > now - period_s
        )

    def _rate_limited(self, now: float, desired: int) -> int:
        behavior = self.behavior
        if desired > self.replicas:
            start = self._replicas_at_period_start(now, behavior.scale_up_period_s)
            limit = max(
                math.ceil(start * (1 + behavior.scale_up_percent / 100)),
                start + behavior.scale_up_pods,
            )
            return min(desired, limit)
        if desired < self.replicas:
            start = self._replicas_at_period_start(now, behavior.scale_down_period_s)
            limits = []
            if behavior.scale_down_percent is not None:
                limits.append(math.ceil(start * (1 - behavior.scale_down_percent / 100)))
            if behavior.scale_down_pods is not None:
                limits.append(start - behavior.scale_down_pods)
            return max(desired, min(limits)) if limits else self.replicas
        return desired

    def step(self, now: float, metric: float) -> HpaDecision:
        """One sync of the controller at time `now` (seconds) with the pods' average metric."""
        current = self.replicas
        # Like the controller, the unclamped recommendation is what gets stabilised; min/max come last.
        raw = raw_desired_replicas(current, metric, self.target, self.behavior.tolerance)
        stabilized = self._stabilize(now, raw)
        replicas = min(max(self._rate_limited(now, stabilized), self.min_replicas), self.max_replicas)
        if replicas != current:
            self._scale_events.append((now, replicas - current))
            horizon = max(self.behavior.scale_up_period_s, self.behavior.scale_down_period_s)
            self._scale_events = [e for e in self._scale_events if e[0] > now - horizon]
        self.replicas = replicas
        return HpaDecision(now, metric, current, raw, stabilized, replicas)
