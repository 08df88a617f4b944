"""ModelDeploymentStatus: the observed state the operator writes (conditions, phase, endpoints, the
repository's build, the canary's progress), and the fields every status of this API has."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field

from model_repo.options import ModelFormat, Task
from modeldeploy.api.base import ApiModel, optional_field


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
    observed_generation: int | None = optional_field(
        "The .metadata.generation the condition was computed from.", ge=0
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

    http: str | None = optional_field("KServe v2 HTTP/REST endpoint.")
    grpc: str | None = optional_field("KServe v2 gRPC endpoint (host:port).")
    metrics: str | None = optional_field("Triton's Prometheus metrics.")
    model_name: str | None = optional_field("Triton model name to call.")
    openai: str | None = optional_field(
        "Base URL of the OpenAI-compatible API (with spec.api.openai enabled)."
    )
    rerank: str | None = optional_field(
        "Base URL of /v1/rerank, /v2/rerank and /v1/score (with spec.api.rerank), e.g. Cohere's base_url."
    )
    classify: str | None = optional_field("URL of /v1/classify (with spec.api.classify).")
    tei: str | None = optional_field(
        "Base URL of the TEI routes (with spec.api.tei), e.g. InferenceClient's base_url."
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
    percent: float | None = optional_field("Of the download: bytes done of the total.")
    bytes_done: int | None = optional_field("Bytes downloaded so far.", ge=0)
    bytes_total: int | None = optional_field("Bytes to download (when known).", ge=0)
    bytes_per_second: float | None = optional_field("Download rate over the last seconds.")
    eta_seconds: float | None = optional_field("Time left to download at that rate.")
    message: str | None = optional_field("The report as a sentence.", max_length=1024)
    summary: str | None = optional_field("A few words, for kubectl get.", max_length=64)
    pod: str | None = optional_field("The pod whose builder reported it.", max_length=253)


class ModelRepositoryStatus(ApiModel):
    """The generated Triton model repository."""

    digest: str | None = optional_field("Digest of the repository's inputs (cache key).")
    format: ModelFormat | None = optional_field("Format the repository is built in.")
    task: Task | None = optional_field("Task the model is served for.")
    accuracy: AccuracyStatus | None = optional_field(
        "The build's accuracy gate: an optimised model against float32."
    )
    progress: ProgressStatus | None = optional_field(
        "While a builder runs: its latest progress report (read every few seconds)."
    )
    memory_bytes: int | None = optional_field(
        "Device memory the repository records it needs (weights, activations, KV cache).", ge=0
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
    error_ratio: float | None = optional_field("Failed requests / requests.")
    mean_latency_us: float | None = optional_field("Mean request duration, µs.")
    mean_queue_us: float | None = optional_field("Mean queue time, µs.")


class AnalysisStatus(ApiModel):
    """The latest judgement of the canary against the stable revision."""

    time: str = Field(description="When it was made (RFC 3339).", json_schema_extra={"format": "date-time"})
    outcome: AnalysisOutcome = Field(description="Passed, Failed or Inconclusive (too few requests).")
    message: str = Field(max_length=1024, description="What was measured against which threshold.")
    canary: RevisionMetrics | None = optional_field("The canary's metrics.")
    stable: RevisionMetrics | None = optional_field("The stable revision's metrics.")


class RolloutStatus(ApiModel):
    """Where a canary rollout stands (the operator resumes from here after a restart)."""

    phase: RolloutPhase = Field(
        description="Progressing, Promoting (the stable Deployment takes the canary's revision), "
        "Succeeded, RolledBack or Aborted."
    )
    stable_digest: str | None = optional_field("Repository digest the stable pods serve.")
    canary_digest: str | None = optional_field("Repository digest under test.")
    step: int = Field(default=0, ge=0, description="Current step, from 1 (0: none).")
    steps: int = Field(default=0, ge=0, description="Number of steps.")
    weight: int = Field(default=0, ge=0, le=100, description="The step's canary share, %.")
    step_started_at: str | None = optional_field(
        "When the canary's pods of this step were ready (RFC 3339); unset while they start.",
        json_schema_extra={"format": "date-time"},
    )
    last_analysis: AnalysisStatus | None = optional_field("The latest analysis.")
    failed_digest: str | None = optional_field(
        "The repository digest rolled back (not retried while the spec asks it)."
    )
    message: str | None = optional_field("What is happening, on one line.", max_length=1024)
    summary: str | None = optional_field("For kubectl get, e.g. 'step 2/3 (50%)'.")


class ModelDeploymentStatus(ApiModel):
    """Observed state, written only by the operator."""

    observed_generation: ObservedGeneration = None
    phase: Phase | None = optional_field("Summary: Pending, Building, Deploying, Ready, Degraded, Failed.")
    conditions: list[Condition] | None = conditions_field(
        "ModelRepositoryReady, Available, AutoscalerReady, ScalingReady and Ready."
    )
    replicas: Replicas = None
    ready_replicas: ReadyReplicas = None
    replica_summary: str | None = optional_field("ready/desired, for kubectl get.")
    selector: PodSelector = None
    endpoints: Endpoints | None = optional_field("Where to send requests.")
    model_repository: ModelRepositoryStatus | None = optional_field("The generated repository.")
    reason: str | None = optional_field(
        "Why the model is (not) Ready, in one CamelCase word: the Ready condition's reason, or what "
        "degrades a serving model (docs/operator.md: When a model is not Ready)."
    )
    message: str | None = optional_field("The most important thing to know right now, on one line.")
    rollout: RolloutStatus | None = optional_field("The canary rollout (spec.rollout.strategy Canary).")
