"""ModelDeploymentStatus: the observed state the operator writes (conditions, phase, endpoints, the
repository's build, the canary's progress), and the fields every status of this API has."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field

from model_repo.options import ModelFormat, Task
from modeldeploy.api.base import ApiModel


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason for the last transition.")
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was computed from."
    )
    last_transition_time: str = Field(
        description="When the status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )


def conditions_field(types: str) -> Any:
    """status.conditions: one Condition per type, of the `types` named (a list the API server merges by
    type)."""
    return Field(
        default=None,
        description=types,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


# Fields of every status this API writes (a ModelDeployment's, a ModelServer's); status.replicas and
# status.selector are the scale subresource's.
ObservedGeneration = Annotated[int | None, Field(description="Generation last reconciled.")]
Replicas = Annotated[int | None, Field(description="Pods that exist (scale subresource).")]
ReadyReplicas = Annotated[int | None, Field(description="Pods that are Ready.")]
PodSelector = Annotated[str | None, Field(description="Label selector of the pods (scale subresource).")]


class Phase(StrEnum):
    PENDING = "Pending"
    BUILDING = "Building"
    DEPLOYING = "Deploying"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class Endpoints(ApiModel):
    """In-cluster URLs of the model."""

    http: str | None = Field(default=None, description="KServe v2 HTTP/REST endpoint.")
    grpc: str | None = Field(default=None, description="KServe v2 gRPC endpoint (host:port).")
    metrics: str | None = Field(default=None, description="Triton's Prometheus metrics.")
    model_name: str | None = Field(default=None, description="Triton model name to call.")
    openai: str | None = Field(
        default=None, description="Base URL of the OpenAI-compatible API (with spec.api.openai enabled)."
    )
    rerank: str | None = Field(
        default=None,
        description=(
            "Base URL of /v1/rerank, /v2/rerank and /v1/score (with spec.api.rerank), e.g. Cohere's base_url."
        ),
    )
    classify: str | None = Field(default=None, description="URL of /v1/classify (with spec.api.classify).")
    tei: str | None = Field(
        default=None,
        description="Base URL of the TEI routes (with spec.api.tei), e.g. InferenceClient's base_url.",
    )


class AccuracyStatus(ApiModel):
    """What the build measured of an optimised model against float32 on the calibration texts."""

    optimisation: str = Field(max_length=256, description="What was optimised, e.g. int8 (31 of 37 layers).")
    metric: str = Field(max_length=64, description="The gated metric.")
    value: float = Field(description="Its value.")
    floor: float = Field(description="The floor it had to reach.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Every figure measured.")
    texts: int = Field(ge=0, description="Calibration texts measured on.")


class ProgressStatus(ApiModel):
    """How far the build of the repository is, from the builder's latest report."""

    stage: str = Field(
        max_length=32, description="download, inspect, load, verify, optimise, export, write, done, stalled."
    )
    percent: float | None = Field(default=None, description="Of the download: bytes done of the total.")
    bytes_done: int | None = Field(default=None, ge=0, description="Bytes downloaded so far.")
    bytes_total: int | None = Field(default=None, ge=0, description="Bytes to download (when known).")
    bytes_per_second: float | None = Field(default=None, description="Download rate over the last seconds.")
    eta_seconds: float | None = Field(default=None, description="Time left to download at that rate.")
    message: str | None = Field(default=None, max_length=1024, description="The report as a sentence.")
    summary: str | None = Field(default=None, max_length=64, description="A few words, for kubectl get.")
    pod: str | None = Field(default=None, max_length=253, description="The pod whose builder reported it.")


class ModelRepositoryStatus(ApiModel):
    """The generated Triton model repository."""

    digest: str | None = Field(default=None, description="Digest of the repository's inputs (cache key).")
    format: ModelFormat | None = Field(default=None, description="Format the repository is built in.")
    task: Task | None = Field(default=None, description="Task the model is served for.")
    accuracy: AccuracyStatus | None = Field(
        default=None,
        description="The build's accuracy gate: an optimised model against float32.",
    )
    progress: ProgressStatus | None = Field(
        default=None, description="While a builder runs: its latest progress report (read every few seconds)."
    )
    memory_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Device memory the repository records it needs (weights, activations, KV cache).",
    )


class RolloutPhase(StrEnum):
    PROGRESSING = "Progressing"
    PROMOTING = "Promoting"
    SUCCEEDED = "Succeeded"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"


class AnalysisOutcome(StrEnum):
    PASSED = "Passed"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


class RevisionMetrics(ApiModel):
    """One revision's Triton metrics over the last analysis interval."""

    requests: float = Field(ge=0, description="Requests served (successful and failed).")
    error_ratio: float | None = Field(default=None, description="Failed requests / requests.")
    mean_latency_us: float | None = Field(default=None, description="Mean request duration, µs.")
    mean_queue_us: float | None = Field(default=None, description="Mean queue time, µs.")


class AnalysisStatus(ApiModel):
    """The latest judgement of the canary against the stable revision."""

    time: str = Field(description="When it was made (RFC 3339).", json_schema_extra={"format": "date-time"})
    outcome: AnalysisOutcome = Field(description="Passed, Failed or Inconclusive (too few requests).")
    message: str = Field(max_length=1024, description="What was measured against which threshold.")
    canary: RevisionMetrics | None = Field(default=None, description="The canary's metrics.")
    stable: RevisionMetrics | None = Field(default=None, description="The stable revision's metrics.")


class RolloutStatus(ApiModel):
    """Where a canary rollout stands (the operator resumes from here after a restart)."""

    phase: RolloutPhase = Field(
        description="Progressing, Promoting (the stable Deployment takes the canary's revision), "
        "Succeeded, RolledBack or Aborted."
    )
    stable_digest: str | None = Field(default=None, description="Repository digest the stable pods serve.")
    canary_digest: str | None = Field(default=None, description="Repository digest under test.")
    step: int = Field(default=0, ge=0, description="Current step, from 1 (0: none).")
    steps: int = Field(default=0, ge=0, description="Number of steps.")
    weight: int = Field(default=0, ge=0, le=100, description="The step's canary share, %.")
    step_started_at: str | None = Field(
        default=None,
        description="When the canary's pods of this step were ready (RFC 3339); unset while they start.",
        json_schema_extra={"format": "date-time"},
    )
    last_analysis: AnalysisStatus | None = Field(default=None, description="The latest analysis.")
    failed_digest: str | None = Field(
        default=None, description="The repository digest rolled back (not retried while the spec asks it)."
    )
    message: str | None = Field(default=None, max_length=1024, description="What is happening, on one line.")
    summary: str | None = Field(default=None, description="For kubectl get, e.g. 'step 2/3 (50%)'.")


class ModelDeploymentStatus(ApiModel):
    """Observed state, written only by the operator."""

    observed_generation: ObservedGeneration = None
    phase: Phase | None = Field(
        default=None, description="Summary: Pending, Building, Deploying, Ready, Degraded, Failed."
    )
    conditions: list[Condition] | None = conditions_field(
        "ModelRepositoryReady, Available, AutoscalerReady, ScalingReady and Ready."
    )
    replicas: Replicas = None
    ready_replicas: ReadyReplicas = None
    replica_summary: str | None = Field(default=None, description="ready/desired, for kubectl get.")
    selector: PodSelector = None
    endpoints: Endpoints | None = Field(default=None, description="Where to send requests.")
    model_repository: ModelRepositoryStatus | None = Field(
        default=None, description="The generated repository."
    )
    reason: str | None = Field(
        default=None,
        description=(
            "Why the model is (not) Ready, in one CamelCase word: the Ready condition's reason, or what "
            "degrades a serving model (docs/operator.md: When a model is not Ready)."
        ),
    )
    message: str | None = Field(
        default=None, description="The most important thing to know right now, on one line."
    )
    rollout: RolloutStatus | None = Field(
        default=None, description="The canary rollout (spec.rollout.strategy Canary)."
    )
