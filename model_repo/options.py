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


# Source URI schemes the fetcher understands; the CRD's CEL rule and the fetcher both read this.
SOURCE_SCHEMES: tuple[str, ...] = ("hf", "s3", "gs", "pvc", "file")
