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


# Defaults of the builder and of the operator's API alike.
DEFAULT_MAX_BATCH_SIZE = 32
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
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    preferred_batch_sizes: tuple[int, ...] = ()
    instances_per_device: int = 1
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
