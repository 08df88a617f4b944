"""Vocabulary shared by the builder and the operator's API (one source of truth for both)."""

from __future__ import annotations

from enum import StrEnum


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
