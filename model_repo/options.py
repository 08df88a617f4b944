"""Vocabulary shared by the builder and the operator's API (one source of truth for both)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

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
