"""spec.resources, spec.autoscaling and spec.cache: the pods' compute and placement, how many there are,
and where built repositories are kept."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field

from modeldeploy.api.base import ApiModel, Quantity, Rule, optional_field, quantity_schema
from modeldeploy.names import DNS1123_SUBDOMAIN, LABEL_VALUE


class Toleration(ApiModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = optional_field("Taint key to tolerate.", max_length=316)
    operator: Literal["Exists", "Equal"] | None = optional_field("Exists or Equal.")
    value: str | None = optional_field("Taint value (with Equal).", max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = optional_field(
        "Taint effect to tolerate; all effects when empty."
    )
    toleration_seconds: int | None = optional_field("How long a NoExecute taint is tolerated.")


class ResourceAmounts(ApiModel):
    """CPU and memory amounts (Kubernetes quantities)."""

    cpu: Quantity | None = Field(
        default=None,
        json_schema_extra=quantity_schema("CPU cores, e.g. 2 or 500m."),
    )
    memory: Quantity | None = Field(
        default=None,
        json_schema_extra=quantity_schema("Memory, e.g. 8Gi."),
    )


class Resources(ApiModel):
    """Compute for each Triton pod."""

    gpus: Annotated[
        int,
        Field(
            default=0, ge=0, le=16, description="NVIDIA GPUs per pod (nvidia.com/gpu). 0 serves on the CPU."
        ),
    ] = 0
    gpu_product: str | None = optional_field(
        "Required value of the nvidia.com/gpu.product node label (GPU Feature Discovery), e.g. "
        "NVIDIA-A100-SXM4-80GB.",
        max_length=63,
        pattern=LABEL_VALUE,
    )
    requests: ResourceAmounts | None = optional_field("CPU/memory requests of the Triton container.")
    limits: ResourceAmounts | None = optional_field("CPU/memory limits of the Triton container.")
    node_selector: dict[str, str] | None = optional_field("Extra node labels the pods must match.")
    tolerations: list[Toleration] | None = optional_field(
        "Extra tolerations (the nvidia.com/gpu toleration is added when gpus > 0).", max_length=32
    )
    affinity: dict[str, Any] | None = optional_field(
        "A core/v1 Affinity for the pods, merged with the GPU product affinity.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    __rules__ = (
        Rule(
            cel="!has(self.gpuProduct) || self.gpus >= 1",
            message="spec.resources.gpuProduct needs spec.resources.gpus >= 1",
            check=lambda r: r.gpu_product is None or r.gpus >= 1,
            field_path=".gpuProduct",
        ),
    )


class AutoscalingMetric(StrEnum):
    QUEUE_TIME = "queueTime"
    QUEUE_COMPUTE_RATIO = "queueComputeRatio"
    PENDING_REQUESTS = "pendingRequests"
    RUNNING_SEQUENCES = "runningSequences"
    GENERATION_PRESSURE = "generationPressure"
    CPU = "cpu"


class AutoscalingEngine(StrEnum):
    HPA = "hpa"
    KEDA = "keda"


# Targets used when `autoscaling.target` is omitted, chosen by bench/autoscaling's sweep (bench/README.md):
# each sits near 80% of one pod's capacity for all-MiniLM-L6-v2 on a CPU. Only the ratio carries over to
# other models and hardware: a request that waits half a batch's compute means the pod is nearly busy,
# while queue microseconds and queued requests scale with the model's forward-pass time and batch size.
DEFAULT_TARGETS: dict[AutoscalingMetric, str] = {
    AutoscalingMetric.QUEUE_TIME: "50000",  # average µs a request waits in Triton's queue
    AutoscalingMetric.QUEUE_COMPUTE_RATIO: "500m",  # queue time / compute time
    AutoscalingMetric.PENDING_REQUESTS: "8",  # queued requests per pod
    # Sequences in the continuous batch per pod (text-generation): 3/4 of the CPU default of 16 slots.
    AutoscalingMetric.RUNNING_SEQUENCES: "12",
    # 1: one of its signals (requests waiting for a slot, KV-cache use) at its own target.
    AutoscalingMetric.GENERATION_PRESSURE: "1",
    AutoscalingMetric.CPU: "70",  # % of the CPU request
}
_TARGET_DESCRIPTION = (
    "Per-pod target of the metric (a quantity, e.g. 500m for 0.5). Defaults: "
    + ", ".join(f"{metric.value} {target}" for metric, target in DEFAULT_TARGETS.items())
    + ". queueTime and pendingRequests depend on the model's speed and batch size: tune them per model."
)


class Autoscaling(ApiModel):
    """Scale the Triton pods on a Triton metric (HPA with prometheus-adapter, or KEDA)."""

    min_replicas: Annotated[
        int, Field(default=1, ge=0, le=1000, description="Fewest pods. 0 needs scaleToZero (KEDA).")
    ] = 1
    max_replicas: Annotated[int, Field(ge=1, le=1000, description="Most pods.")]
    metric: Annotated[
        AutoscalingMetric,
        Field(
            default=AutoscalingMetric.QUEUE_COMPUTE_RATIO,
            description=(
                "queueTime: average µs a request waits in Triton's queue; queueComputeRatio: queue time "
                "over compute time; pendingRequests: requests queued per pod; runningSequences: "
                "sequences being generated per pod (text-generation only); generationPressure: the larger "
                "of requests waiting for a sequence slot per pod over 4 and KV-cache use over 0.8, one "
                "composite signal (KEDA scalingModifiers; engine keda, text-generation only); cpu: CPU "
                "utilisation %."
            ),
        ),
    ] = AutoscalingMetric.QUEUE_COMPUTE_RATIO
    target: Quantity | None = optional_field(
        _TARGET_DESCRIPTION, json_schema_extra=quantity_schema(_TARGET_DESCRIPTION)
    )
    engine: Annotated[
        AutoscalingEngine,
        Field(
            default=AutoscalingEngine.HPA, description="hpa: autoscaling/v2 HPA; keda: a KEDA ScaledObject."
        ),
    ] = AutoscalingEngine.HPA
    scale_to_zero: Annotated[
        bool,
        Field(default=False, description="Allow zero pods when idle (engine keda, minReplicas 0)."),
    ] = False

    @property
    def effective_target(self) -> str:
        return str(self.target) if self.target is not None else DEFAULT_TARGETS[self.metric]

    __rules__ = (
        Rule(
            cel="self.maxReplicas >= self.minReplicas",
            message="spec.autoscaling.maxReplicas must be >= spec.autoscaling.minReplicas",
            check=lambda a: a.max_replicas >= a.min_replicas,
            field_path=".maxReplicas",
        ),
        Rule(
            cel="!self.scaleToZero || (self.minReplicas == 0 && self.engine == 'keda')",
            message="spec.autoscaling.scaleToZero needs minReplicas == 0 and engine keda",
            check=lambda a: (
                not a.scale_to_zero or (a.min_replicas == 0 and a.engine == AutoscalingEngine.KEDA)
            ),
            field_path=".scaleToZero",
        ),
        Rule(
            cel="self.minReplicas > 0 || self.scaleToZero",
            message="spec.autoscaling.minReplicas may be 0 only with scaleToZero: true",
            check=lambda a: a.min_replicas > 0 or a.scale_to_zero,
            field_path=".minReplicas",
        ),
    )


class Cache(ApiModel):
    """A PersistentVolumeClaim keeping built model repositories, so restarts and scale-ups skip the build."""

    claim_name: str | None = optional_field(
        "Use this existing PVC.", max_length=253, pattern=DNS1123_SUBDOMAIN
    )
    size: Quantity | None = optional_field(
        "Create a PVC of this size (owned by the ModelDeployment).",
        json_schema_extra=quantity_schema("Create a PVC of this size (owned by the ModelDeployment)."),
    )
    storage_class_name: str | None = optional_field(
        "Storage class of the created PVC (with size); the cluster default when omitted.", max_length=253
    )

    __rules__ = (
        Rule(
            cel="has(self.claimName) != has(self.size)",
            message="spec.cache needs exactly one of claimName (an existing PVC) or size (a new PVC)",
            check=lambda c: (c.claim_name is None) != (c.size is None),
        ),
        Rule(
            cel="!has(self.storageClassName) || has(self.size)",
            message="spec.cache.storageClassName applies only with spec.cache.size",
            check=lambda c: c.storage_class_name is None or c.size is not None,
            field_path=".storageClassName",
        ),
    )
