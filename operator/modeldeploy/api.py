"""The ModelDeployment API (modeldeploy.dev/v1alpha1).

These pydantic models are the single source of truth: the CRD's OpenAPI schema, including the CEL
`x-kubernetes-validations` for cross-field rules, is generated from them (see `crd.py`), and the operator
validates every object it reads with the same models, so a spec that slips past admission (an older CRD,
validation disabled) gets the same message in its status as the API server would have given.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from model_repo.options import (
    DEFAULT_MAX_QUEUE_DELAY_US,
    DEVICE_BATCHING,
    MAX_BATCH_SIZE_LIMIT,
    MAX_CONCURRENT_SEQUENCES,
    SOURCE_SCHEMES,
    DType,
    ModelFormat,
    Quantization,
    Task,
)
from modeldeploy.names import DNS1123_SUBDOMAIN, LABEL_VALUE

GROUP = "modeldeploy.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["mdeploy"]

# Kubernetes resource.Quantity, as apimachinery parses it.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# A branch, tag or commit: git's ref rules, without "..", leading "/" or "-", or whitespace.
REVISION_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$"
SOURCE_PATTERN = r"^(" + "|".join(SOURCE_SCHEMES) + r")://"


def quantity_schema(description: str) -> dict[str, Any]:
    return {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN,
        "description": description,
    }


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, int) or re.fullmatch(QUANTITY_PATTERN, value):
        return value
    raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 2, 500m, 8Gi)")


Quantity = Annotated[int | str, AfterValidator(_check_quantity)]


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, written once: a CEL expression for the API server and a Python check for the
    operator. `message` names the field and says what is allowed; both sides report it verbatim."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def as_schema(self) -> dict[str, str]:
        rule = {"rule": self.cel, "message": self.message}
        if self.field_path:
            rule["fieldPath"] = self.field_path
        return rule


class SpecError(ValueError):
    """A spec that breaks the API's rules; `messages` are each prefixed with the offending field."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
        validate_default=True,
    )
    # This object's cross-field rules: CEL in its schema, checked in Python after field validation.
    __rules__: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        broken = [rule.message for rule in type(self).__rules__ if not rule.check(self)]
        if broken:
            raise ValueError("; ".join(broken))
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema: dict[str, Any] = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        if cls.__rules__:
            target["x-kubernetes-validations"] = [rule.as_schema() for rule in cls.__rules__]
        if cls.__doc__:
            target["description"] = " ".join(cls.__doc__.split())
        return schema

    def dump(self) -> dict[str, Any]:
        """The camelCase JSON form, without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---------------------------------------------------------------------------------------------- spec


class ModelSource(ApiModel):
    """Where the checkpoint comes from and how far to trust it."""

    source: Annotated[
        str,
        Field(
            min_length=6,
            max_length=2048,
            description=(
                "URI of the Hugging Face Transformers checkpoint: hf://<org>/<name> (Hugging Face Hub), "
                "s3://<bucket>/<prefix>, gs://<bucket>/<prefix>, pvc://<claim>/<path> (a "
                "PersistentVolumeClaim in the same namespace) or file:///<path> (a path inside the "
                "builder container; for local and test use)."
            ),
        ),
    ]
    revision: Annotated[
        str | None,
        Field(
            default=None,
            max_length=255,
            pattern=REVISION_PATTERN,
            description=(
                "Branch, tag or commit of the checkpoint (hf:// only). Pinning a commit is recommended: a "
                "moving branch changes what a pod restart serves."
            ),
        ),
    ] = None
    task: Annotated[
        Task | None,
        Field(
            default=None,
            description=(
                "What the model is served for. Detected from the checkpoint's architecture when omitted."
            ),
        ),
    ] = None
    credentials_secret: Annotated[
        str | None,
        Field(
            default=None,
            max_length=253,
            pattern=DNS1123_SUBDOMAIN,
            description=(
                "Name of a Secret in the same namespace whose keys become the builder's environment, e.g. "
                "HF_TOKEN, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS. "
                "Referenced, never copied."
            ),
        ),
    ] = None
    trust_remote_code: Annotated[
        bool,
        Field(
            default=False,
            description=(
                "Allow Python code shipped inside the checkpoint (auto_map) to run in the builder and the "
                "server. Off by default: a checkpoint that needs it is refused with a message naming this "
                "field."
            ),
        ),
    ] = False
    allow_new_head: Annotated[
        bool,
        Field(
            default=False,
            description=(
                "Build even when the task does not fit the checkpoint: its task head would be newly "
                "initialised (random), or the checkpoint was trained for another task. Off by default: "
                "such a build fails with a message naming the checkpoint's architectures and the tasks it "
                "supports. Only for users who fine-tune the fresh head elsewhere."
            ),
        ),
    ] = False
    download_stall_seconds: Annotated[
        int | None,
        Field(
            default=None,
            ge=0,
            le=86400,
            description=(
                "A download that receives no bytes for this many seconds fails (status reason "
                "DownloadStalled) instead of hanging; 0 never fails it. Default: 300. The builder's "
                "argument: setting or changing it builds the repository again."
            ),
        ),
    ] = None

    __rules__ = (
        Rule(
            cel="self.source.matches('" + SOURCE_PATTERN + "')",
            message=(
                "spec.model.source must start with one of "
                + ", ".join(f"{scheme}://" for scheme in SOURCE_SCHEMES)
            ),
            check=lambda m: m.source.split("://", 1)[0] in SOURCE_SCHEMES and "://" in m.source,
            field_path=".source",
        ),
        Rule(
            cel="!self.source.contains('..')",
            message="spec.model.source must not contain '..' (path traversal)",
            check=lambda m: ".." not in m.source,
            field_path=".source",
        ),
        Rule(
            cel="!has(self.revision) || !self.revision.contains('..')",
            message="spec.model.revision must be a branch, tag or commit and must not contain '..'",
            check=lambda m: m.revision is None or ".." not in m.revision,
            field_path=".revision",
        ),
        Rule(
            cel="!has(self.revision) || self.source.startsWith('hf://')",
            message="spec.model.revision applies only to hf:// sources; remove it or use an hf:// source",
            check=lambda m: m.revision is None or m.source.startswith("hf://"),
            field_path=".revision",
        ),
    )


class DynamicBatching(ApiModel):
    """How Triton merges concurrent requests into one batch."""

    max_queue_delay_microseconds: Annotated[
        int,
        Field(
            default=DEFAULT_MAX_QUEUE_DELAY_US,
            ge=0,
            le=1_000_000,
            description=(
                "How long a request may wait in the queue for others to batch with. 0 (the default) "
                "batches what is already waiting: under load a busy instance batches whatever queued "
                "meanwhile anyway, so a delay only costs a lone request its whole length (measured by "
                "bench/dataplane)."
            ),
        ),
    ] = DEFAULT_MAX_QUEUE_DELAY_US
    preferred_batch_sizes: Annotated[
        list[Annotated[int, Field(ge=1, le=4096)]] | None,
        Field(
            default=None,
            max_length=16,
            description="Batch sizes the scheduler aims for; each must be <= triton.maxBatchSize.",
        ),
    ] = None


class Calibration(ApiModel):
    """Calibration texts for the accuracy gate: a key of a ConfigMap, one text per line."""

    config_map_name: Annotated[
        str, Field(min_length=1, max_length=253, description="ConfigMap in the ModelDeployment's namespace.")
    ]
    key: Annotated[
        str,
        Field(
            min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key holding the texts."
        ),
    ]


class TritonConfig(ApiModel):
    """How the Triton model repository is generated and served."""

    format: Annotated[
        ModelFormat,
        Field(
            default=ModelFormat.AUTO,
            description=(
                "Repository format. auto: vllm for text-generation on GPUs, python otherwise. python: the "
                "generic batched Python-backend runtime (any task, CPU or GPU). onnx: ONNX Runtime "
                "ensemble (encoder tasks). vllm: Triton's vLLM backend (text-generation, GPUs)."
            ),
        ),
    ] = ModelFormat.AUTO
    max_batch_size: Annotated[
        int | None,
        Field(
            default=None,
            ge=1,
            le=MAX_BATCH_SIZE_LIMIT,
            description=(
                "Largest batch Triton forms (config max_batch_size). Default: chosen per device from "
                f"measurement, {DEVICE_BATCHING['cpu'].max_batch_size} on CPUs, "
                f"{DEVICE_BATCHING['gpu'].max_batch_size} on GPUs."
            ),
        ),
    ] = None
    dynamic_batching: Annotated[
        DynamicBatching,
        Field(default_factory=DynamicBatching, description="Dynamic batching settings."),
    ]
    instances_per_device: Annotated[
        int | None,
        Field(
            default=None,
            ge=1,
            le=16,
            description=(
                "Model instances per GPU (or on the CPU when gpus is 0). Each one holds the weights. "
                f"Default: {DEVICE_BATCHING['cpu'].instances_per_device} on CPUs, "
                f"{DEVICE_BATCHING['gpu'].instances_per_device} per GPU."
            ),
        ),
    ] = None
    max_sequence_length: Annotated[
        int | None,
        Field(
            default=None,
            ge=8,
            le=131072,
            description=(
                "Longest input in tokens; longer texts are truncated. Defaults to the checkpoint's "
                "maximum positions."
            ),
        ),
    ] = None
    max_concurrent_sequences: Annotated[
        int | None,
        Field(
            default=None,
            ge=1,
            le=MAX_CONCURRENT_SEQUENCES,
            description=(
                "text-generation: sequences one instance decodes together (continuous batching); up to 4x "
                "as many more wait, beyond that requests are refused as UNAVAILABLE. Default: 64 on a GPU, "
                "16 on the CPU, fewer when their full-context KV cache would not fit the budget."
            ),
        ),
    ] = None
    max_tokens: Annotated[
        int | None,
        Field(
            default=None,
            ge=1,
            le=131072,
            description=(
                "text-generation: the most tokens one request may ask for; more is refused as INVALID_ARG. "
                "Default: the context length - 1."
            ),
        ),
    ] = None
    dtype: Annotated[
        DType,
        Field(
            default=DType.AUTO,
            description="Weights' dtype at serving time. auto: float16 on GPUs, float32 on the CPU.",
        ),
    ] = DType.AUTO
    image: Annotated[
        str | None,
        Field(
            default=None,
            max_length=512,
            description="Triton server image override (default: the operator's triton-runtime image).",
        ),
    ] = None
    response_cache: Annotated[
        bool,
        Field(
            default=False,
            description=(
                "Cache responses of identical requests in Triton's local cache. Not allowed for "
                "text-generation (streaming models cannot use it)."
            ),
        ),
    ] = False
    quantization: Annotated[
        Quantization,
        Field(
            default=Quantization.NONE,
            description=(
                "none, or int8: dynamic int8 weights and activations of the Linear layers (PyTorch's "
                "dynamic quantisation in the python format, ONNX Runtime's quantize_dynamic in the onnx "
                "format), for encoder tasks on CPUs. GPUs are refused (no measured int8 GPU path yet; they "
                "serve float16), as is text-generation. The build measures the int8 model against float32 "
                "(see accuracyFloor), keeps the few layers that cost accuracy in float32, and fails below "
                "the floor."
            ),
        ),
    ] = Quantization.NONE
    accuracy_floor: Annotated[
        float | None,
        Field(
            default=None,
            ge=0.0,
            le=1.0,
            description=(
                "Accuracy gate of an optimised model (quantization int8, or dtype bfloat16): the lowest "
                "acceptable value of the task's metric against float32 on the calibration texts. Metrics: "
                "label agreement (text-classification), entity agreement (token-classification), mean "
                "cosine (feature-extraction), top-1 agreement (fill-mask), greedy token agreement "
                "(text-generation). Default 0.99 for cosine, 0.98 for agreements."
            ),
        ),
    ] = None
    calibration: Annotated[
        Calibration | None,
        Field(
            default=None,
            description=(
                "Calibration texts for the accuracy gate (default: a built-in set of English sentences)."
            ),
        ),
    ] = None

    __rules__ = (
        Rule(
            cel=(
                "!has(self.quantization) || self.quantization != 'int8' || !has(self.dtype) || "
                "self.dtype == 'auto' || self.dtype == 'float32'"
            ),
            message=(
                "spec.triton.quantization int8 keeps its unquantised layers in float32; "
                "leave spec.triton.dtype auto or float32"
            ),
            check=lambda t: t.quantization != Quantization.INT8 or t.dtype in (DType.AUTO, DType.FLOAT32),
            field_path=".quantization",
        ),
        Rule(
            cel=(
                "!has(self.maxBatchSize) || !has(self.dynamicBatching) || "
                "!has(self.dynamicBatching.preferredBatchSizes) || "
                "self.dynamicBatching.preferredBatchSizes.all(s, s <= self.maxBatchSize)"
            ),
            message=(
                "spec.triton.dynamicBatching.preferredBatchSizes must each be <= spec.triton.maxBatchSize"
            ),
            # Without maxBatchSize the device's default applies; the build checks against it.
            check=lambda t: (
                t.max_batch_size is None
                or all(size <= t.max_batch_size for size in (t.dynamic_batching.preferred_batch_sizes or []))
            ),
            field_path=".dynamicBatching.preferredBatchSizes",
        ),
    )


class Toleration(ApiModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, max_length=316, description="Taint key to tolerate.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value (with Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; all effects when empty."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated."
    )


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
    gpu_product: Annotated[
        str | None,
        Field(
            default=None,
            max_length=63,
            pattern=LABEL_VALUE,
            description=(
                "Required value of the nvidia.com/gpu.product node label (GPU Feature Discovery), e.g. "
                "NVIDIA-A100-SXM4-80GB."
            ),
        ),
    ] = None
    requests: Annotated[
        ResourceAmounts | None,
        Field(default=None, description="CPU/memory requests of the Triton container."),
    ] = None
    limits: Annotated[
        ResourceAmounts | None, Field(default=None, description="CPU/memory limits of the Triton container.")
    ] = None
    node_selector: Annotated[
        dict[str, str] | None,
        Field(default=None, description="Extra node labels the pods must match."),
    ] = None
    tolerations: Annotated[
        list[Toleration] | None,
        Field(
            default=None,
            max_length=32,
            description="Extra tolerations (the nvidia.com/gpu toleration is added when gpus > 0).",
        ),
    ] = None
    affinity: Annotated[
        dict[str, Any] | None,
        Field(
            default=None,
            description="A core/v1 Affinity for the pods, merged with the GPU product affinity.",
            json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        ),
    ] = None

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
    target: Annotated[
        Quantity | None,
        Field(
            default=None,
            description=_TARGET_DESCRIPTION,
            json_schema_extra=quantity_schema(_TARGET_DESCRIPTION),
        ),
    ] = None
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

    claim_name: Annotated[
        str | None,
        Field(default=None, max_length=253, pattern=DNS1123_SUBDOMAIN, description="Use this existing PVC."),
    ] = None
    size: Annotated[
        Quantity | None,
        Field(
            default=None,
            description="Create a PVC of this size (owned by the ModelDeployment).",
            json_schema_extra=quantity_schema("Create a PVC of this size (owned by the ModelDeployment)."),
        ),
    ] = None
    storage_class_name: Annotated[
        str | None,
        Field(
            default=None,
            max_length=253,
            description="Storage class of the created PVC (with size); the cluster default when omitted.",
        ),
    ] = None

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


# Triton's own ports in the pod (HTTP, gRPC, metrics): the OpenAI sidecar must not take one of them.
TRITON_PORTS = (8000, 8001, 8002)
OPENAI_TASKS = (Task.FEATURE_EXTRACTION, Task.TEXT_GENERATION)
# The sidecar's other route groups and the tasks each fits (model_repo/openai_frontend: rerank.py, tei.py).
ROUTE_TASKS: dict[str, tuple[Task, ...]] = {
    "rerank": (Task.TEXT_RANKING,),
    "classify": (Task.TEXT_CLASSIFICATION,),
    "tei": (Task.FEATURE_EXTRACTION, Task.TEXT_RANKING, Task.TEXT_CLASSIFICATION),
}
DEFAULT_API_PORT = 9000
# Any route group of the sidecar enabled: what API keys and a loopback-only Triton need.
SIDECAR_ENABLED_CEL = (
    "((has(self.openai) && self.openai.enabled) || "
    + " || ".join(f"(has(self.{name}) && self.{name})" for name in ROUTE_TASKS)
    + ")"
)
SIDECAR_GROUPS = "spec.api.openai.enabled true or one of " + ", ".join(
    f"spec.api.{name}" for name in ROUTE_TASKS
)


class OpenAIApi(ApiModel):
    """An OpenAI-compatible API for this model (docs/openai.md): a sidecar in each Triton pod serves
    /v1/models, /v1/embeddings (feature-extraction) and /v1/completions and /v1/chat/completions
    (text-generation), calling Triton over gRPC on localhost."""

    enabled: bool = Field(default=False, description="Run the OpenAI-compatible sidecar.")
    port: int = Field(
        default=9000,
        ge=1024,
        le=65535,
        description="Container and Service port of the API (the Service port is named openai).",
    )

    __rules__ = (
        Rule(
            cel="!(self.port in [8000, 8001, 8002])",
            message="spec.api.openai.port must differ from Triton's ports 8000, 8001 and 8002",
            check=lambda o: o.port not in TRITON_PORTS,
            field_path=".port",
        ),
    )


class ApiAuth(ApiModel):
    """API keys that every route of the sidecar but its health checks requires (docs/security.md)."""

    secret_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description=(
            "A Secret in the same namespace: each non-empty line of each of its values is an accepted key "
            "(sent as 'Authorization: Bearer <key>'). Several keys rotate without downtime: add the new "
            "one, move the clients, remove the old. Mounted, not copied: a change reaches running pods "
            "without a restart, within the kubelet's sync period (about a minute) plus 2 seconds."
        ),
    )


# The header that unlocks Triton's administrative APIs (model repository, shared memory, trace, logging).
# Its value is drawn at random when the container starts and never leaves it: no one can send it.
RESTRICTED_API_HEADER = "modeldeploy-restricted"


class Api(ApiModel):
    """Protocols served besides Triton's own KServe v2 HTTP and gRPC, and who may call them. One sidecar
    serves every enabled one, on spec.api.openai.port (9000 unless set)."""

    openai: OpenAIApi | None = Field(
        default=None, description="The OpenAI-compatible API (off when omitted)."
    )
    rerank: bool = Field(
        default=False,
        description=(
            "Serve /v1/rerank and /v2/rerank (Cohere/Jina shape) and /v1/score (vLLM's): text-ranking."
        ),
    )
    classify: bool = Field(
        default=False, description="Serve /v1/classify (vLLM's shape): text-classification."
    )
    tei: bool = Field(
        default=False,
        description=(
            "Serve Hugging Face TEI's routes (/embed, /rerank, /predict, /tokenize, /decode, /info and "
            "POST /): feature-extraction, text-ranking or text-classification."
        ),
    )
    auth: ApiAuth | None = Field(
        default=None,
        description=(
            "API keys for the sidecar's routes (needs one of its route groups enabled: spec.api.openai, "
            "rerank, classify or tei); none when omitted."
        ),
    )
    expose_triton: bool | None = Field(
        default=None,
        description=(
            "Whether Triton's own HTTP and gRPC APIs listen on the pod's address (and the Service offers "
            "them). false keeps them on the pod's loopback: the sidecar is the only way in. Default: false "
            "with spec.api.auth (keys are pointless if Triton can be called around them), true otherwise "
            "(Triton's API is then how clients reach the model). Either way Triton's model-repository, "
            "shared-memory, trace and logging APIs answer no request from outside the container."
        ),
    )

    __rules__ = (
        Rule(
            cel=f"!has(self.auth) || {SIDECAR_ENABLED_CEL}",
            message=f"spec.api.auth protects the sidecar's API: it needs {SIDECAR_GROUPS}",
            check=lambda a: a.auth is None or a.sidecar_enabled,
            field_path=".auth",
        ),
        Rule(
            cel=f"!has(self.exposeTriton) || self.exposeTriton || {SIDECAR_ENABLED_CEL}",
            message=(
                "spec.api.exposeTriton false leaves the sidecar as the only way in: it needs "
                + SIDECAR_GROUPS
            ),
            check=lambda a: a.expose_triton is not False or a.sidecar_enabled,
            field_path=".exposeTriton",
        ),
    )

    @property
    def sidecar_enabled(self) -> bool:
        """Whether any of the sidecar's route groups is on (so that the sidecar runs)."""
        return (self.openai is not None and self.openai.enabled) or any(
            getattr(self, name) for name in ROUTE_TASKS
        )

    @property
    def triton_exposed(self) -> bool:
        if self.expose_triton is not None:
            return self.expose_triton
        return self.auth is None


# A qualified label key ([DNS-subdomain prefix/]name): apimachinery's rule, lengths approximated by the
# name's 63 characters and the whole key's 316. Alternations rather than `[...](...)?` groups: the
# schema pattern of matchExpressions keys is quoted in docs/api-reference.md, where `](` reads as a link.
LABEL_KEY = (
    r"^(([a-z0-9]|[a-z0-9][-a-z0-9]*[a-z0-9])(\.([a-z0-9]|[a-z0-9][-a-z0-9]*[a-z0-9]))*/)?"
    r"([A-Za-z0-9]|[A-Za-z0-9][-A-Za-z0-9_.]{0,61}[A-Za-z0-9])$"
)


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(ApiModel):
    """One requirement of a label selector (metav1.LabelSelectorRequirement)."""

    key: str = Field(min_length=1, max_length=316, pattern=LABEL_KEY, description="The label key.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]] | None = Field(
        default=None,
        max_length=64,
        description="Label values: at least one for In and NotIn, none for Exists and DoesNotExist.",
    )

    __rules__ = (
        Rule(
            cel=("(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)"),
            message=(
                "spec.network selectors: matchExpressions values must be non-empty for operator In and "
                "NotIn, and absent for Exists and DoesNotExist"
            ),
            check=lambda r: (r.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)) == bool(r.values),
            field_path=".values",
        ),
    )


def _check_label_keys(labels: dict[str, str] | None) -> dict[str, str] | None:
    bad = [key for key in labels or {} if len(key) > 316 or not re.fullmatch(LABEL_KEY, key)]
    if bad:
        raise ValueError(
            f"{', '.join(repr(key) for key in bad)} is not a label key ([prefix/]name, the name 1-63 of "
            "[A-Za-z0-9_.-], the prefix a DNS subdomain)"
        )
    return labels


class LabelSelector(ApiModel):
    """A label selector (metav1.LabelSelector); empty selects everything."""

    # The keys are checked by the operator (the status names the field), not by a CEL rule at admission:
    # a regular expression over map keys of unbounded length, in every selector of two lists, risks the
    # API server's CEL cost budget for the whole CRD (judged, not measured).
    match_labels: Annotated[
        dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]] | None,
        AfterValidator(_check_label_keys),
    ] = Field(
        default=None,
        max_length=64,
        description="Labels that must all match (key: value).",
        json_schema_extra={"maxProperties": 64},
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=32, description="Requirements that must all hold."
    )


class NetworkPeer(ApiModel):
    """Pods that may connect: those matching podSelector in the namespaces matching namespaceSelector.
    With only namespaceSelector, every pod of those namespaces; with only podSelector, those pods of the
    model's own namespace."""

    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces, by their labels (kubernetes.io/metadata.name is the name)."
    )
    pod_selector: LabelSelector | None = Field(default=None, description="Pods, by their labels.")

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.namespaceSelector) || has(self.podSelector)",
            message="spec.network peers need namespaceSelector, podSelector or both",
            check=lambda p: p.namespace_selector is not None or p.pod_selector is not None,
        ),
    )


class EgressPeer(NetworkPeer):
    """A destination the pods may connect to: pods (as for ingress) or an IP block."""

    cidr: str | None = Field(
        default=None,
        max_length=64,
        description="An IP block (CIDR), e.g. 10.0.0.0/8 or 0.0.0.0/0, instead of selectors.",
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.cidr) != (has(self.namespaceSelector) || has(self.podSelector))",
            message=(
                "spec.network.egressTo peers are either a cidr or selectors (namespaceSelector, podSelector)"
            ),
            check=lambda p: (
                (p.cidr is not None) != (p.namespace_selector is not None or p.pod_selector is not None)
            ),
        ),
        Rule(
            cel="!has(self.cidr) || isCIDR(self.cidr)",
            message="spec.network.egressTo cidr must be an IPv4 or IPv6 CIDR, e.g. 10.0.0.0/8",
            check=lambda p: p.cidr is None or _is_cidr(p.cidr),
            field_path=".cidr",
        ),
    )


def _is_cidr(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        return False
    return "/" in value


class Network(ApiModel):
    """A NetworkPolicy for this model's pods (docs/security.md). Enforced only where the cluster's network
    plugin implements NetworkPolicy (Calico, Cilium, ...); elsewhere it is accepted and has no effect."""

    allow_from: list[NetworkPeer] | None = Field(
        default=None,
        max_length=32,
        description=(
            "Who may reach the serving ports (the sidecar's API, and Triton's HTTP and gRPC while exposed). "
            "Default: pods of the model's own namespace. An empty list: no one outside the pod."
        ),
    )
    monitoring_namespace: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="The namespace whose pods may scrape Triton's metrics port; closed to all when omitted.",
    )
    egress_to: list[EgressPeer] | None = Field(
        default=None,
        max_length=32,
        description=(
            "Where the pods may connect (DNS to any namespace is always allowed). Omitted: egress is left "
            "alone (not part of the policy). Note the builder init container downloads the checkpoint "
            "from the pods, so hf://, s3:// and gs:// sources need those endpoints listed."
        ),
    )


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

    prometheus_url: Annotated[
        str | None,
        Field(
            default=None,
            max_length=2048,
            pattern=r"^https?://",
            description=(
                "Base URL of the Prometheus query API (e.g. http://prometheus-operated.monitoring:9090). "
                "Default: the operator's --prometheus-url."
            ),
        ),
    ] = None
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
    namespace: Annotated[
        str | None,
        Field(
            default=None,
            max_length=63,
            pattern=DNS1123_SUBDOMAIN,
            description="Namespace of the Gateway (default: the ModelDeployment's).",
        ),
    ] = None


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
    gateway_ref: Annotated[
        GatewayRef | None,
        Field(default=None, description="The Gateway of the HTTPRoute (traffic HTTPRoute only)."),
    ] = None
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
    canary: Annotated[
        Canary | None,
        Field(default=None, description="Canary settings (strategy Canary; defaults when omitted)."),
    ] = None

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


class ServerRef(ApiModel):
    """A shared ModelServer (same namespace) to load this model into instead of a Deployment of its own
    (docs/packing.md)."""

    name: Annotated[
        str,
        Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN, description="The ModelServer's name."),
    ]


# What only a Deployment of the model's own can honour: a model placed on a shared server takes the
# server's replicas, resources, cache and pods (no sidecars), so each is refused beside spec.server.
DEDICATED_ONLY_CEL = (
    "!has(self.server) || (self.replicas == 1 && !has(self.autoscaling) && !has(self.cache) && "
    "!has(self.api) && !has(self.rollout) && !has(self.network) && "
    "(!has(self.resources) || (self.resources.gpus == 0 && "
    "!has(self.resources.gpuProduct) && !has(self.resources.requests) && !has(self.resources.limits) && "
    "!has(self.resources.nodeSelector) && !has(self.resources.tolerations) && "
    "!has(self.resources.affinity))))"
)
DEDICATED_ONLY_FIELDS = "replicas, autoscaling, resources, cache, api, rollout, network"


def _fits_shared_server(spec: ModelDeploymentSpec) -> bool:
    return spec.server is None or (
        spec.replicas == 1
        and spec.autoscaling is None
        and spec.cache is None
        and spec.api is None
        and spec.rollout is None
        and spec.network is None
        and spec.resources == Resources()
    )


def _route_rule(name: str, tasks: tuple[Task, ...]) -> Rule:
    """spec.api.<name> only for the tasks its routes fit, refused at admission naming the field."""
    listed = ", ".join(f"'{task.value}'" for task in tasks)
    return Rule(
        cel=f"!has(self.api) || !has(self.api.{name}) || !self.api.{name} || "
        f"(has(self.model.task) && self.model.task in [{listed}])",
        message=f"spec.api.{name} needs spec.model.task set to {' or '.join(t.value for t in tasks)}",
        check=lambda s: s.api is None or not getattr(s.api, name) or s.model.task in tasks,
        field_path=f".api.{name}",
    )


class ModelDeploymentSpec(ApiModel):
    """Desired state of a ModelDeployment: a checkpoint served by Triton."""

    model: Annotated[ModelSource, Field(description="The checkpoint to serve.")]
    triton: Annotated[
        TritonConfig,
        Field(default_factory=TritonConfig, description="Triton repository and server settings."),
    ]
    resources: Annotated[
        Resources, Field(default_factory=Resources, description="Compute and placement of each pod.")
    ]
    replicas: Annotated[
        int,
        Field(
            default=1,
            ge=0,
            le=1000,
            description="Number of Triton pods (ignored while autoscaling is set). kubectl scale sets it.",
        ),
    ] = 1
    autoscaling: Annotated[
        Autoscaling | None,
        Field(default=None, description="Autoscale on a Triton metric; a fixed replica count when omitted."),
    ] = None
    cache: Annotated[
        Cache | None,
        Field(default=None, description="Keep built repositories on a PVC; built in every pod when omitted."),
    ] = None
    api: Annotated[
        Api | None,
        Field(default=None, description="Extra APIs in front of the model, e.g. OpenAI-compatible."),
    ] = None
    rollout: Annotated[
        Rollout | None,
        Field(
            default=None,
            description="How a new model repository reaches the pods; RollingUpdate when omitted.",
        ),
    ] = None

    @property
    def canary(self) -> Canary | None:
        """The canary settings when the rollout strategy is Canary, else None."""
        return self.rollout.effective_canary if self.rollout is not None else None

    network: Annotated[
        Network | None,
        Field(default=None, description="A NetworkPolicy for the model's pods; none when omitted."),
    ] = None

    server: Annotated[
        ServerRef | None,
        Field(
            default=None,
            description=(
                "Load the model into this shared ModelServer (same namespace) instead of running a "
                "Deployment of its own; placed only where its recorded memory fits the server's capacity."
            ),
        ),
    ] = None

    @property
    def openai(self) -> OpenAIApi | None:
        """The OpenAI API settings when it is enabled, else None."""
        if self.api is None or self.api.openai is None or not self.api.openai.enabled:
            return None
        return self.api.openai

    @property
    def triton_exposed(self) -> bool:
        """Whether Triton's HTTP and gRPC listen beyond the pod's loopback (spec.api.exposeTriton)."""
        return self.api is None or self.api.triton_exposed

    @property
    def api_routes(self) -> tuple[str, ...]:
        """The sidecar's enabled route groups (openai, rerank, classify, tei); empty: no sidecar."""
        if self.api is None:
            return ()
        groups = ["openai"] if self.openai is not None else []
        groups += [name for name in ROUTE_TASKS if getattr(self.api, name)]
        return tuple(groups)

    @property
    def api_port(self) -> int:
        return (
            self.api.openai.port if self.api is not None and self.api.openai is not None else DEFAULT_API_PORT
        )

    __rules__ = (
        Rule(
            cel=(
                "!has(self.triton) || self.triton.format != 'vllm' || (has(self.model.task) && "
                "self.model.task == 'text-generation' && has(self.resources) && self.resources.gpus >= 1)"
            ),
            message=(
                "spec.triton.format vllm needs spec.model.task text-generation and spec.resources.gpus >= 1"
            ),
            check=lambda s: (
                s.triton.format != ModelFormat.VLLM
                or (s.model.task == Task.TEXT_GENERATION and s.resources.gpus >= 1)
            ),
            field_path=".triton.format",
        ),
        Rule(
            cel=(
                "!has(self.triton) || self.triton.format != 'onnx' || !has(self.model.task) || "
                "self.model.task != 'text-generation'"
            ),
            message=(
                "spec.triton.format onnx supports encoder tasks only; use python or vllm for text-generation"
            ),
            check=lambda s: s.triton.format != ModelFormat.ONNX or s.model.task != Task.TEXT_GENERATION,
            field_path=".triton.format",
        ),
        Rule(
            cel=(
                "!has(self.triton) || !self.triton.responseCache || !has(self.model.task) || "
                "self.model.task != 'text-generation'"
            ),
            message="spec.triton.responseCache cannot be used with text-generation (a streaming model)",
            check=lambda s: not s.triton.response_cache or s.model.task != Task.TEXT_GENERATION,
            field_path=".triton.responseCache",
        ),
        Rule(
            cel=(
                "!has(self.triton) || self.triton.quantization != 'int8' || "
                "!has(self.resources) || self.resources.gpus == 0"
            ),
            message=(
                "spec.triton.quantization int8 runs on CPUs only (spec.resources.gpus 0): "
                "no GPU int8 path is measured yet; GPUs serve float16"
            ),
            check=lambda s: s.triton.quantization != Quantization.INT8 or s.resources.gpus == 0,
            field_path=".triton.quantization",
        ),
        Rule(
            cel=(
                "!has(self.triton) || self.triton.quantization != 'int8' || !has(self.model.task) || "
                "self.model.task != 'text-generation'"
            ),
            message=(
                "spec.triton.quantization int8 is for encoder tasks; text-generation is not measured with it "
                "(use dtype bfloat16 on a CPU that has it)"
            ),
            check=lambda s: (
                s.triton.quantization != Quantization.INT8 or s.model.task != Task.TEXT_GENERATION
            ),
            field_path=".triton.quantization",
        ),
        Rule(
            cel=(
                "!has(self.triton) || self.triton.dtype != 'float16' || "
                "(has(self.resources) && self.resources.gpus >= 1)"
            ),
            message=(
                "spec.triton.dtype float16 needs spec.resources.gpus >= 1; use float32 or bfloat16 on the CPU"
            ),
            check=lambda s: s.triton.dtype != DType.FLOAT16 or s.resources.gpus >= 1,
            field_path=".triton.dtype",
        ),
        Rule(
            cel=(
                "!has(self.autoscaling) || self.autoscaling.metric != 'runningSequences' || "
                "(has(self.model.task) && self.model.task == 'text-generation' && "
                "(!has(self.triton) || self.triton.format != 'vllm'))"
            ),
            message=(
                "spec.autoscaling.metric runningSequences needs spec.model.task text-generation served by "
                "the python format (the runtime exports it)"
            ),
            check=lambda s: (
                s.autoscaling is None
                or s.autoscaling.metric != AutoscalingMetric.RUNNING_SEQUENCES
                or (s.model.task == Task.TEXT_GENERATION and s.triton.format != ModelFormat.VLLM)
            ),
            field_path=".autoscaling.metric",
        ),
        Rule(
            cel=(
                "!has(self.autoscaling) || self.autoscaling.metric != 'generationPressure' || "
                "(has(self.autoscaling.engine) && self.autoscaling.engine == 'keda' && "
                "has(self.model.task) && self.model.task == 'text-generation' && "
                "(!has(self.triton) || self.triton.format != 'vllm'))"
            ),
            message=(
                "spec.autoscaling.metric generationPressure needs engine keda (its scalingModifiers combine "
                "the signals) and spec.model.task text-generation served by the python format"
            ),
            check=lambda s: (
                s.autoscaling is None
                or s.autoscaling.metric != AutoscalingMetric.GENERATION_PRESSURE
                or (
                    s.autoscaling.engine == AutoscalingEngine.KEDA
                    and s.model.task == Task.TEXT_GENERATION
                    and s.triton.format != ModelFormat.VLLM
                )
            ),
            field_path=".autoscaling.metric",
        ),
        Rule(
            cel=(
                "!has(self.api) || !has(self.api.openai) || !self.api.openai.enabled || "
                "(has(self.model.task) && self.model.task in ['feature-extraction', 'text-generation'])"
            ),
            message=(
                "spec.api.openai needs spec.model.task set to feature-extraction (embeddings) or "
                "text-generation (completions and chat)"
            ),
            check=lambda s: s.openai is None or s.model.task in OPENAI_TASKS,
            field_path=".api.openai",
        ),
        Rule(
            cel=DEDICATED_ONLY_CEL,
            message=(
                "spec.server places the model on a shared ModelServer, which decides "
                f"{DEDICATED_ONLY_FIELDS}: leave spec.replicas at 1 and spec.autoscaling, spec.resources, "
                "spec.cache and spec.api unset (set them on the ModelServer)"
            ),
            check=_fits_shared_server,
            field_path=".server",
        ),
        *(_route_rule(name, tasks) for name, tasks in ROUTE_TASKS.items()),
    )


# -------------------------------------------------------------------------------------------- status


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

    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    phase: Phase | None = Field(
        default=None, description="Summary: Pending, Building, Deploying, Ready, Degraded, Failed."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="ModelRepositoryReady, Available, AutoscalerReady, ScalingReady and Ready.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    replicas: int | None = Field(default=None, description="Pods that exist (scale subresource).")
    ready_replicas: int | None = Field(default=None, description="Pods that are Ready.")
    replica_summary: str | None = Field(default=None, description="ready/desired, for kubectl get.")
    selector: str | None = Field(default=None, description="Label selector of the pods (scale subresource).")
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


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class ModelDeployment(BaseModel):
    """A ModelDeployment as the operator sees it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None


def format_error(error: Any) -> str:
    path = ".".join(str(part) for part in error["loc"])
    message: str = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
        # Rule messages already name their full field path.
        if message.startswith("spec.") or not path:
            return message
    return f"{path}: {message}" if path else message


def to_camel_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(to_camel(part) if isinstance(part, str) else part for part in loc)


def parse_spec(spec: dict[str, Any]) -> ModelDeploymentSpec:
    """Validate a raw `spec` dict; raise SpecError whose messages each name the offending field."""
    try:
        return ModelDeploymentSpec.model_validate(spec)
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            loc = ("spec", *to_camel_path(tuple(error["loc"])))
            messages.append(format_error({**error, "loc": loc}))
        raise SpecError(messages) from exc


def parse_model_deployment(body: dict[str, Any]) -> ModelDeployment:
    """Validate a whole object (as kopf hands it over)."""
    spec = parse_spec(dict(body.get("spec") or {}))
    return ModelDeployment(
        metadata=ObjectMeta.model_validate(dict(body.get("metadata") or {})),
        spec=spec,
        status=ModelDeploymentStatus.model_validate(body["status"]) if body.get("status") else None,
    )
