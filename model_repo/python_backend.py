"""The contract between the builder and the Python-backend runtime (`runtime/model.py`): which files a
Python model runs, the config.pbtxt parameters it reads, how warm-up texts are encoded, and where its
instances run. The `python` format and the `onnx` format's tokenizer and post-processing models share it."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from model_repo.checkpoint import CheckpointInfo
from model_repo.options import Task
from model_repo.runtime.model import ROLE_CLASSES, SHARED_MODULES

RUNTIME_DIR = Path(__file__).parent / "runtime"
RUNTIME_FILE = RUNTIME_DIR / "model.py"
# Beside model.py in every Python model: the modules all roles share, and the one of the model's role.
SHARED_RUNTIME_FILES = tuple(RUNTIME_DIR / f"{module}.py" for module in SHARED_MODULES)
ROLE_RUNTIME_FILES = {role: RUNTIME_DIR / f"{module}.py" for role, (module, _) in ROLE_CLASSES.items()}
# The continuous-batching engine the generator role imports (copied with it), with the modules it
# imports: its metrics, its request contract, its answers' text, its decoding arithmetic, its adapter over
# transformers, the decoding step's own forward.
GENERATION_RUNTIME_FILES = tuple(
    RUNTIME_DIR / f"{module}.py"
    for module in (
        "generation",
        "generation_metrics",
        "request_parsing",
        "answer_text",
        "decoding",
        "hf_adapter",
        "decode_step",
    )
)
# Text pairs and cross-encoder scores, which the encoder role imports for the pair tasks (copied with it).
RANKING_RUNTIME_FILE = RUNTIME_DIR / "ranking.py"
# The encoder's forward over real tokens only (unpadded.py), copied with the encoder role.
UNPADDED_RUNTIME_FILE = RUNTIME_DIR / "unpadded.py"
# Beside every encoder: the roles that let a packed server run it in its shared host (model_set.py).
SHARED_RUNTIME_ROLE_FILES = (ROLE_RUNTIME_FILES["forward"], ROLE_RUNTIME_FILES["host"])
FILL_MASK_TOP_K = 5


def install_runtime(version_dir: Path, role: str, pairs: bool = False) -> None:
    """Make `version_dir` a Python model serving `role`: the runtime as its model.py, the modules every
    role shares, the role's module (with the generation engine for the generator, or the text-pair
    helpers of text-classification and text-ranking; with an encoder, its unpadded forward and the
    forwarder and the host that serve it through a packed server's shared runtime)."""
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RUNTIME_FILE, version_dir / "model.py")
    sources = [*SHARED_RUNTIME_FILES, ROLE_RUNTIME_FILES[role]]
    if role == "generator":
        sources += GENERATION_RUNTIME_FILES
    if pairs:
        sources.append(RANKING_RUNTIME_FILE)
    if role == "encoder":
        sources += [UNPADDED_RUNTIME_FILE, *SHARED_RUNTIME_ROLE_FILES]
    for source in sources:
        shutil.copyfile(source, version_dir / source.name)


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
