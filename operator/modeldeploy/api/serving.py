"""spec.model and spec.triton: where the checkpoint comes from and how Triton's repository is built and
served (batching, instances, dtype, quantisation and its accuracy gate)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

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
from model_repo.triton_args import CpuWaitPolicy
from modeldeploy.api.base import ApiModel, Rule, optional_field
from modeldeploy.names import DNS1123_SUBDOMAIN

# A branch, tag or commit: git's ref rules, without "..", leading "/" or "-", or whitespace.
REVISION_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$"
SOURCE_PATTERN = r"^(" + "|".join(SOURCE_SCHEMES) + r")://"


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
    revision: str | None = optional_field(
        "Branch, tag or commit of the checkpoint (hf:// only). Pinning a commit is recommended: a "
        "moving branch changes what a pod restart serves.",
        max_length=255,
        pattern=REVISION_PATTERN,
    )
    task: Task | None = optional_field(
        "What the model is served for. Detected from the checkpoint's architecture when omitted."
    )
    credentials_secret: str | None = optional_field(
        "Name of a Secret in the same namespace whose keys become the builder's environment, e.g. "
        "HF_TOKEN, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS. "
        "Referenced, never copied.",
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
    )
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
    download_stall_seconds: int | None = optional_field(
        "A download that receives no bytes for this many seconds fails (status reason "
        "DownloadStalled) instead of hanging; 0 never fails it. Default: 300. The builder's "
        "argument: setting or changing it builds the repository again.",
        ge=0,
        le=86400,
    )

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
    preferred_batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] | None = optional_field(
        "Batch sizes the scheduler aims for; each must be <= triton.maxBatchSize.", max_length=16
    )


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


CPU_WAIT_POLICY_DESCRIPTION = (
    "How the runtime's OpenMP threads wait for each other between a forward pass's parallel regions "
    "(on a CPU; the runtime also chooses each pass's thread count from measured passes). spin: they spin "
    "briefly (tens of microseconds) before they sleep. passive: they sleep at once, which spends the "
    "least CPU time beside other work (e.g. a tight CPU limit). Measured on 2 cores: spin served "
    "one-text requests up to 1.46x as fast on an idle machine and 0.84-1.02x beside one busy process. "
    "Changing it restarts the pods; the repository is not rebuilt."
)


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
    max_batch_size: int | None = optional_field(
        "Largest batch Triton forms (config max_batch_size). Default: chosen per device from "
        f"measurement, {DEVICE_BATCHING['cpu'].max_batch_size} on CPUs, "
        f"{DEVICE_BATCHING['gpu'].max_batch_size} on GPUs.",
        ge=1,
        le=MAX_BATCH_SIZE_LIMIT,
    )
    dynamic_batching: Annotated[
        DynamicBatching,
        Field(default_factory=DynamicBatching, description="Dynamic batching settings."),
    ]
    instances_per_device: int | None = optional_field(
        "Model instances per GPU (or on the CPU when gpus is 0). Each one holds the weights. "
        f"Default: {DEVICE_BATCHING['cpu'].instances_per_device} on CPUs, "
        f"{DEVICE_BATCHING['gpu'].instances_per_device} per GPU.",
        ge=1,
        le=16,
    )
    max_sequence_length: int | None = optional_field(
        "Longest input in tokens; longer texts are truncated. Defaults to the checkpoint's "
        "maximum positions.",
        ge=8,
        le=131072,
    )
    max_concurrent_sequences: int | None = optional_field(
        "text-generation: sequences one instance decodes together (continuous batching); up to 4x "
        "as many more wait, beyond that requests are refused as UNAVAILABLE. Default: 64 on a GPU, "
        "16 on the CPU, fewer when their full-context KV cache would not fit the budget.",
        ge=1,
        le=MAX_CONCURRENT_SEQUENCES,
    )
    max_tokens: int | None = optional_field(
        "text-generation: the most tokens one request may ask for; more is refused as INVALID_ARG. "
        "Default: the context length - 1.",
        ge=1,
        le=131072,
    )
    dtype: Annotated[
        DType,
        Field(
            default=DType.AUTO,
            description="Weights' dtype at serving time. auto: float16 on GPUs, float32 on the CPU.",
        ),
    ] = DType.AUTO
    image: str | None = optional_field(
        "Triton server image override (default: the operator's triton-runtime image).", max_length=512
    )
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
    accuracy_floor: float | None = optional_field(
        "Accuracy gate of an optimised model (quantization int8, or dtype bfloat16): the lowest "
        "acceptable value of the task's metric against float32 on the calibration texts. Metrics: "
        "label agreement (text-classification), entity agreement (token-classification), mean "
        "cosine (feature-extraction), top-1 agreement (fill-mask), greedy token agreement "
        "(text-generation). Default 0.99 for cosine, 0.98 for agreements.",
        ge=0.0,
        le=1.0,
    )
    calibration: Calibration | None = optional_field(
        "Calibration texts for the accuracy gate (default: a built-in set of English sentences)."
    )
    cpu_wait_policy: Annotated[
        CpuWaitPolicy | None,
        Field(
            default=None,
            description=CPU_WAIT_POLICY_DESCRIPTION
            + " Unset: spin on a dedicated deployment; a model placed on a ModelServer follows the server's.",
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
