"""The contract between the builder and the Python-backend runtime (`runtime/model.py`): which file a
Python model runs, the config.pbtxt parameters it reads, how warm-up texts are encoded, and where its
instances run. The `python` format and the `onnx` format's tokenizer and post-processing models share it."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from model_repo.checkpoint import CheckpointInfo
from model_repo.options import Task

RUNTIME_FILE = Path(__file__).parent / "runtime" / "model.py"
# The continuous-batching engine model.py loads for text-generation (copied next to it), with the modules
# it loads by path: its request contract, its decoding arithmetic, its adapter over transformers' internals.
GENERATION_RUNTIME_FILES = tuple(
    Path(__file__).parent / "runtime" / name
    for name in ("generation.py", "request_parsing.py", "decoding.py", "hf_adapter.py")
)
# Text pairs and cross-encoder scores, which model.py loads for the encoder tasks (copied next to it).
RANKING_RUNTIME_FILE = Path(__file__).parent / "runtime" / "ranking.py"
FILL_MASK_TOP_K = 5


def install_runtime(version_dir: Path, generation: bool = False, pairs: bool = False) -> None:
    """Make `version_dir` a Python model: the runtime as its model.py (and the generation engine, or the
    text-pair helpers of text-classification and text-ranking)."""
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RUNTIME_FILE, version_dir / "model.py")
    if generation:
        for source in GENERATION_RUNTIME_FILES:
            shutil.copyfile(source, version_dir / source.name)
    if pairs:
        shutil.copyfile(RANKING_RUNTIME_FILE, version_dir / RANKING_RUNTIME_FILE.name)


def runtime_parameters(
    info: CheckpointInfo, role: str, dtype: str, max_length: int, trust_remote_code: bool
) -> dict[str, str]:
    """The config.pbtxt parameters the runtime reads for `role` (encoder, generator, tokenizer,
    postprocess)."""
    params = {
        "role": role,
        "task": info.task.value,
        "dtype": dtype,
        "max_sequence_length": str(max_length),
        "trust_remote_code": "true" if trust_remote_code else "false",
    }
    if info.labels:
        params["labels"] = json.dumps(list(info.labels))
    if info.problem_type:
        params["problem_type"] = info.problem_type
    if info.task is Task.FEATURE_EXTRACTION:
        st = info.sentence_transformers
        params["pooling"] = st.pooling if st else "cls"
        params["normalize"] = "true" if st and st.normalize else "false"
    if info.ranking_activation:
        params["ranking_activation"] = info.ranking_activation
    if info.task is Task.FILL_MASK:
        params["top_k"] = str(FILL_MASK_TOP_K)
    return params


def write_string_warmup(path: Path, text: str) -> None:
    """A TYPE_STRING warm-up input file: Triton reads each element as a 4-byte length, then the bytes."""
    data = text.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<I", len(data)) + data)


def string_warmup_input(name: str) -> tuple[str, tuple[int, ...], str]:
    """The Warmup input that reads the file `write_string_warmup` wrote as `warmup/<name>`."""
    return ("TYPE_STRING", (1,), f'input_data_file: "{name}"')


def instance_kind(device: str) -> str:
    return "KIND_GPU" if device == "gpu" else "KIND_CPU"
