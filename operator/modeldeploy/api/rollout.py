"""spec.rollout: how a change of the model repository reaches the pods (RollingUpdate, Recreate, or a
canary judged on Triton's metrics)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from modeldeploy.api.base import ApiModel, Rule, optional_field
from modeldeploy.names import DNS1123_SUBDOMAIN


class RolloutStrategy(StrEnum):
    RECREATE = "Recreate"
    ROLLING_UPDATE = "RollingUpdate"
    CANARY = "Canary"


class TrafficSplit(StrEnum):
    REPLICAS = "Replicas"
    HTTP_ROUTE = "HTTPRoute"


class CanaryStep(ApiModel):
    """One step of a canary: the canary's share, held at least this long while its analysis passes."""

    weight: Annotated[
        int,
        Field(
            ge=1,
            le=90,
            description=(
                "The canary's share in percent: of the pods (traffic Replicas: canary pods are added "
                "beside the stable ones so that canary/(stable+canary) is at least this share) or of the "
                "requests (traffic HTTPRoute)."
            ),
        ),
    ]
    hold_seconds: Annotated[
        int,
        Field(
            default=120,
            ge=0,
            le=86400,
            description=(
                "How long the step lasts, counted from when the canary's pods of this step are ready. "
                "The step is passed once this has elapsed and the latest analysis passed."
            ),
        ),
    ] = 120


DEFAULT_CANARY_STEPS = (CanaryStep(weight=10), CanaryStep(weight=50))
# Below this mean queue time the queue-time ratio is noise (an idle queue of either revision).
QUEUE_TIME_FLOOR_US = 1000


class CanaryAnalysis(ApiModel):
    """What the canary is judged on, each interval, against the stable revision (Triton's own metrics,
    read from Prometheus over the last interval)."""

    prometheus_url: str | None = optional_field(
        "Base URL of the Prometheus query API (e.g. http://prometheus-operated.monitoring:9090). "
        "Default: the operator's --prometheus-url.",
        max_length=2048,
        pattern=r"^https?://",
    )
    interval_seconds: Annotated[
        int,
        Field(
            default=60,
            ge=10,
            le=3600,
            description="How often the canary is judged, over the metrics of the last interval.",
        ),
    ] = 60
    min_requests: Annotated[
        int,
        Field(
            default=50,
            ge=1,
            le=10_000_000,
            description=(
                "Requests the canary (and the stable revision) must have served in the interval before "
                "a verdict; fewer leaves the step waiting."
            ),
        ),
    ] = 50
    max_error_ratio: Annotated[
        float,
        Field(
            default=0.01,
            ge=0.0,
            le=1.0,
            description=(
                "Highest acceptable share of the canary's requests that fail "
                "(nv_inference_request_failure / all requests), and at most this much above the "
                "stable revision's own."
            ),
        ),
    ] = 0.01
    max_latency_ratio: Annotated[
        float,
        Field(
            default=1.25,
            ge=1.0,
            le=100.0,
            description=(
                "Highest acceptable canary/stable ratio of the mean request duration "
                "(nv_inference_request_duration_us per successful request)."
            ),
        ),
    ] = 1.25
    max_queue_time_ratio: Annotated[
        float,
        Field(
            default=2.0,
            ge=1.0,
            le=100.0,
            description=(
                "Highest acceptable canary/stable ratio of the mean queue time "
                "(nv_inference_queue_duration_us per successful request); not judged while the canary's "
                f"mean queue time is under {QUEUE_TIME_FLOOR_US} µs."
            ),
        ),
    ] = 2.0


class GatewayRef(ApiModel):
    """The Gateway (Gateway API) whose HTTPRoute splits the traffic."""

    name: Annotated[
        str,
        Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN, description="Name of the Gateway."),
    ]
    namespace: str | None = optional_field(
        "Namespace of the Gateway (default: the ModelDeployment's).", max_length=63, pattern=DNS1123_SUBDOMAIN
    )


class Canary(ApiModel):
    """A canary: a new model repository serves a share of the traffic step by step, promoted after the
    last step passes, rolled back at once when a check fails."""

    steps: Annotated[
        list[CanaryStep],
        Field(
            default_factory=lambda: list(DEFAULT_CANARY_STEPS),
            min_length=1,
            max_length=10,
            description="The steps, in order of non-decreasing weight. Default: 10% then 50%, 120 s each.",
        ),
    ]
    traffic: Annotated[
        TrafficSplit,
        Field(
            default=TrafficSplit.REPLICAS,
            description=(
                "Replicas: canary pods beside the stable ones behind the one Service (no mesh needed; "
                "the share is in whole pods). HTTPRoute: a Gateway API HTTPRoute with weighted "
                "stable and canary Services (exact shares; needs the Gateway API and gatewayRef)."
            ),
        ),
    ] = TrafficSplit.REPLICAS
    gateway_ref: GatewayRef | None = optional_field("The Gateway of the HTTPRoute (traffic HTTPRoute only).")
    analysis: Annotated[
        CanaryAnalysis,
        Field(default_factory=CanaryAnalysis, description="How each step is judged."),
    ]

    __rules__ = (
        Rule(
            cel="self.steps.map(s, s.weight).isSorted()",
            message="spec.rollout.canary.steps must be in order of non-decreasing weight",
            check=lambda c: all(a.weight <= b.weight for a, b in zip(c.steps, c.steps[1:], strict=False)),
            field_path=".steps",
        ),
        Rule(
            cel="(self.traffic == 'HTTPRoute') == has(self.gatewayRef)",
            message="spec.rollout.canary.gatewayRef is required with traffic HTTPRoute, and only then",
            check=lambda c: (c.traffic is TrafficSplit.HTTP_ROUTE) == (c.gateway_ref is not None),
            field_path=".gatewayRef",
        ),
    )


class Rollout(ApiModel):
    """How a change of the model repository reaches the pods."""

    strategy: Annotated[
        RolloutStrategy,
        Field(
            default=RolloutStrategy.ROLLING_UPDATE,
            description=(
                "RollingUpdate: pod by pod, a new pod before an old one goes (the default). Recreate: "
                "every old pod goes before new ones start (no two revisions at once; a gap in serving). "
                "Canary: a new model repository is judged on a share of the traffic before it replaces "
                "the stable one (see canary)."
            ),
        ),
    ] = RolloutStrategy.ROLLING_UPDATE
    canary: Canary | None = optional_field("Canary settings (strategy Canary; defaults when omitted).")

    @property
    def effective_canary(self) -> Canary | None:
        """The canary settings in force: None unless the strategy is Canary."""
        if self.strategy is not RolloutStrategy.CANARY:
            return None
        return self.canary or Canary.model_validate({})

    __rules__ = (
        Rule(
            cel="!has(self.canary) || self.strategy == 'Canary'",
            message="spec.rollout.canary applies only with spec.rollout.strategy Canary",
            check=lambda r: r.canary is None or r.strategy is RolloutStrategy.CANARY,
            field_path=".canary",
        ),
    )
