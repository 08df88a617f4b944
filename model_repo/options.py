"""Vocabulary shared by the builder and the operator's API (one source of truth for both)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Literal

# How a build reports what it is doing, one line at a time.
Progress = Callable[[str], None]


class Task(StrEnum):
    TEXT_CLASSIFICATION = "text-classification"
    # A cross-encoder: a sequence-classification head with one logit scoring (query, text) pairs.
    TEXT_RANKING = "text-ranking"
    TOKEN_CLASSIFICATION = "token-classification"
    FEATURE_EXTRACTION = "feature-extraction"
    FILL_MASK = "fill-mask"
    TEXT_GENERATION = "text-generation"


class ModelFormat(StrEnum):
    AUTO = "auto"
    PYTHON = "python"
    ONNX = "onnx"
    VLLM = "vllm"


class DType(StrEnum):
    AUTO = "auto"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class Quantization(StrEnum):
    NONE = "none"
    INT8 = "int8"


# Source URI schemes the fetcher understands; the CRD's CEL rule and the fetcher both read this.
SOURCE_SCHEMES: tuple[str, ...] = ("hf", "s3", "gs", "pvc", "file")


@dataclass(frozen=True)
class DeviceBatching:
    """What a repository batches by default on one kind of device, when the user sets nothing."""

    max_batch_size: int
    instances_per_device: int


# Defaults of the builder and of the operator's API alike, per device, each from a measured row of
# bench/README.md (random-weight all-MiniLM-L6-v2, perf_analyzer, one text per request):
# - cpu: 2-core CPU, one instance using both cores and batches of up to 32 served 0.84 of the model's own
#   length-grouped limit at 64 clients; a second instance only splits the same cores.
# - gpu: one H200, fp16: max batch 128 with two instances served 5,711 req/s at 256 clients (average
#   batch 125) against 2,196 with (32, 1), and 3,236-3,612 against 2,459-2,766 at 64 clients; max batch
#   256 with one instance served 2,481 (one instance idles the GPU while its stub builds responses, the
#   second fills that gap). The price is single-client latency: p50 6.7 ms against 4.9 ms.
# Preferred batch sizes stay unset on both: with no queue delay the batcher takes what is waiting anyway.
DEVICE_BATCHING: dict[str, DeviceBatching] = {
    "cpu": DeviceBatching(max_batch_size=32, instances_per_device=1),
    "gpu": DeviceBatching(max_batch_size=128, instances_per_device=2),
}
DEFAULT_MAX_BATCH_SIZE = DEVICE_BATCHING["cpu"].max_batch_size
# Upper bound of max_batch_size for the API and the CLI alike: one execution of this many texts already
# holds a GPU's worth of activations for a base-size encoder, and warm-up runs a full batch at load.
MAX_BATCH_SIZE_LIMIT = 4096
# Waiting for company only pays when the instance is idle; while it is busy, requests queue anyway and
# the next execution takes them all. Any wait is paid in full by a lone request: bench/dataplane measured
# 500 µs as +29% median latency at one client for a small model, and no throughput gained at 64 clients.
DEFAULT_MAX_QUEUE_DELAY_US = 0
# Upper bound of max_concurrent_sequences (text-generation) for the API and the CLI alike.
MAX_CONCURRENT_SEQUENCES = 4096


def auto_format(task: Task | None, device: str) -> ModelFormat | None:
    """What `--format auto` (spec.triton.format: auto) builds: vLLM for text-generation on GPUs, the
    Python runtime for everything else. None when the task is not known yet and the device makes it
    matter (a GPU); on CPUs every task gets the Python runtime."""
    if task is None:
        return ModelFormat.PYTHON if device == "cpu" else None
    return ModelFormat.VLLM if task is Task.TEXT_GENERATION and device == "gpu" else ModelFormat.PYTHON


def needs_gate(quantization: Quantization, dtype: str) -> bool:
    """Whether a build measures its model against float32 (the accuracy gate), which the operator then
    reports. Anything served in other than float32 on the CPU is measured; float16 is the GPU default and
    cannot be measured on the builder's CPU."""
    return quantization is not Quantization.NONE or dtype == "bfloat16"


@dataclass(frozen=True)
class BuildFlag:
    """How one BuildOptions field is spelled on `modeldeploy build`'s command line."""

    field: str
    flag: str
    # value: `--flag V`, left out when None; repeated: `--flag V` per item; switch: `--flag` when true;
    # toggle: `--flag` or `--no-flag`.
    kind: Literal["value", "repeated", "switch", "toggle"] = "value"


# The builder's flags, one per BuildOptions field: the CLI declares its options from this table and the
# operator writes its build containers' arguments with `BuildOptions.to_args()`, which reads it too. The
# order is the arguments' order (and --help's).
BUILD_FLAGS: tuple[BuildFlag, ...] = (
    BuildFlag("source", "--source"),
    BuildFlag("revision", "--revision"),
    BuildFlag("task", "--task"),
    BuildFlag("format", "--format"),
    BuildFlag("dtype", "--dtype"),
    BuildFlag("max_batch_size", "--max-batch-size"),
    BuildFlag("max_queue_delay_us", "--max-queue-delay-us"),
    BuildFlag("preferred_batch_sizes", "--preferred-batch-size", "repeated"),
    BuildFlag("instances_per_device", "--instances-per-device"),
    BuildFlag("max_sequence_length", "--max-sequence-length"),
    BuildFlag("max_concurrent_sequences", "--max-concurrent-sequences"),
    BuildFlag("max_tokens", "--max-tokens"),
    BuildFlag("device", "--device"),
    BuildFlag("response_cache", "--response-cache", "toggle"),
    BuildFlag("quantization", "--quantization"),
    BuildFlag("accuracy_floor", "--accuracy-floor"),
    BuildFlag("calibration_file", "--calibration-file"),
    BuildFlag("trust_remote_code", "--trust-remote-code", "switch"),
    BuildFlag("allow_new_head", "--allow-new-head", "switch"),
    BuildFlag("model_name", "--model-name"),
)


def _flag_value(value: object) -> str:
    return str(value.value) if isinstance(value, Enum) else str(value)


@dataclass(frozen=True)
class BuildOptions:
    """Everything a build is asked for: the CLI's options, the operator's spec (through the CLI)."""

    source: str
    revision: str | None = None
    task: Task | None = None
    format: ModelFormat = ModelFormat.AUTO
    dtype: DType = DType.AUTO
    # None: the device's default (DEVICE_BATCHING); read them through `batching()`.
    max_batch_size: int | None = None
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    preferred_batch_sizes: tuple[int, ...] = ()
    instances_per_device: int | None = None
    max_sequence_length: int | None = None
    device: str = "cpu"
    response_cache: bool = False
    trust_remote_code: bool = False
    model_name: str = "model"
    allow_new_head: bool = False
    quantization: Quantization = Quantization.NONE
    accuracy_floor: float | None = None
    calibration_file: str | None = None
    # text-generation only; None: derived from the device and the KV cache per sequence / the context.
    max_concurrent_sequences: int | None = None
    max_tokens: int | None = None

    def to_args(self) -> list[str]:
        """These options as `modeldeploy build` flags (BUILD_FLAGS): what the CLI parses back into them."""
        args: list[str] = []
        for spec in BUILD_FLAGS:
            value = getattr(self, spec.field)
            if spec.kind == "switch":
                args += [spec.flag] if value else []
            elif spec.kind == "toggle":
                args.append(spec.flag if value else "--no-" + spec.flag.removeprefix("--"))
            elif spec.kind == "repeated":
                for item in value:
                    args += [spec.flag, _flag_value(item)]
            elif value is not None:
                args += [spec.flag, _flag_value(value)]
        return args

    def batching(self) -> DeviceBatching:
        """Max batch size and instances per device: what was asked for, else the device's default."""
        default = device_batching(self.device)
        return DeviceBatching(
            max_batch_size=self.max_batch_size if self.max_batch_size is not None else default.max_batch_size,
            instances_per_device=(
                self.instances_per_device
                if self.instances_per_device is not None
                else default.instances_per_device
            ),
        )


def device_batching(device: str) -> DeviceBatching:
    """The batching defaults for a device kind ("gpu" or "cpu")."""
    return DEVICE_BATCHING["gpu" if device == "gpu" else "cpu"]
