"""Checkpoint → Triton model repository: fetch, inspect, digest, write, validate, rename into place."""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_repo import __version__
from model_repo.accuracy import ACCURACY_FILE
from model_repo.checkpoint import CheckpointInfo, inspect_checkpoint, task_of_architectures
from model_repo.configs import (
    GENERATION_INPUTS,
    GENERATION_OUTPUTS,
    ModelConfigSpec,
    Tensor,
    Warmup,
    task_outputs,
    validate_config,
)
from model_repo.errors import BuildError
from model_repo.fetch import FetchedCheckpoint, fetch
from model_repo.optimize import GateSettings, needs_gate, optimise_onnx, optimise_python
from model_repo.options import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    MAX_BATCH_SIZE_LIMIT,
    DType,
    ModelFormat,
    Quantization,
    Task,
)

RECORD_FILE = "modeldeploy.json"
RUNTIME_FILE = Path(__file__).parent / "runtime" / "model.py"
# The continuous-batching engine model.py loads for text-generation (copied next to it).
GENERATION_RUNTIME_FILE = Path(__file__).parent / "runtime" / "generation.py"
FILL_MASK_TOP_K = 5
DEFAULT_MAX_TOKENS = 64
# Requests that may wait for a sequence slot, per slot, before new ones are refused as UNAVAILABLE.
QUEUED_PER_SEQUENCE = 4
MAX_CONCURRENT_SEQUENCES = 4096
# The inputs Triton's vLLM backend reads as tensors; the rest of the contract goes in sampling_parameters.
VLLM_INPUTS = ("text_input", "stream", "sampling_parameters", "exclude_input_in_output")
WARMUP_TEXT = "Triton warms this model up so that the first real request is not the slow one."
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildOptions:
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


@dataclass(frozen=True)
class BuildResult:
    digest: str
    format: ModelFormat
    task: Task
    model_name: str
    path: Path
    cache_hit: bool


def _check_options(options: BuildOptions) -> None:
    if options.device not in ("cpu", "gpu"):
        raise BuildError(f"--device must be cpu or gpu, got {options.device!r}")
    if not 1 <= options.max_batch_size <= MAX_BATCH_SIZE_LIMIT:
        raise BuildError(
            f"--max-batch-size {options.max_batch_size} must be between 1 and {MAX_BATCH_SIZE_LIMIT}"
        )
    if options.max_queue_delay_us < 0:
        raise BuildError("--max-queue-delay-us must not be negative")
    if options.instances_per_device < 1:
        raise BuildError("--instances-per-device must be at least 1")
    for size in options.preferred_batch_sizes:
        if not 1 <= size <= options.max_batch_size:
            raise BuildError(
                f"--preferred-batch-size {size} must be between 1 and "
                f"--max-batch-size {options.max_batch_size}"
            )
    if options.max_concurrent_sequences is not None and not (
        1 <= options.max_concurrent_sequences <= MAX_CONCURRENT_SEQUENCES
    ):
        raise BuildError(f"--max-concurrent-sequences must be between 1 and {MAX_CONCURRENT_SEQUENCES}")
    if options.max_tokens is not None and options.max_tokens < 1:
        raise BuildError("--max-tokens must be at least 1")
    if options.max_sequence_length is not None and options.max_sequence_length < 2:
        raise BuildError("--max-sequence-length must be at least 2")
    if not _MODEL_NAME.match(options.model_name):
        raise BuildError(
            f"--model-name {options.model_name!r} must be 1-63 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    if options.device == "cpu" and options.dtype is DType.FLOAT16:
        raise BuildError("--dtype float16 is not supported on CPU; use float32, bfloat16 or auto")
    if options.quantization is Quantization.INT8:
        if options.device == "gpu":
            raise BuildError(
                "--quantization int8 runs on CPUs only (dynamic int8 has no measured GPU path here); "
                "GPUs serve float16 or bfloat16"
            )
        if options.dtype not in (DType.AUTO, DType.FLOAT32):
            raise BuildError(
                "--quantization int8 keeps its unquantised layers in float32; "
                f"drop --dtype {options.dtype.value}"
            )
    if options.calibration_file is not None and not Path(options.calibration_file).is_file():
        raise BuildError(f"--calibration-file {options.calibration_file} is not a readable file")
    if options.accuracy_floor is not None and not 0.0 <= options.accuracy_floor <= 1.0:
        raise BuildError(f"--accuracy-floor must be between 0 and 1, got {options.accuracy_floor}")
    if options.device == "cpu" and options.dtype is DType.BFLOAT16:
        from model_repo.runtime.model import _read_text, cpu_has_native_bfloat16

        cpuinfo = _read_text("/proc/cpuinfo")
        if cpuinfo is not None and not cpu_has_native_bfloat16(cpuinfo):
            raise BuildError(
                "--dtype bfloat16: this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16 or bf16), so "
                "PyTorch would emulate it, slower than float32; use float32 or --quantization int8"
            )


def resolve_format(requested: ModelFormat, task: Task, device: str) -> ModelFormat:
    """The `auto` rule: vLLM for generation on GPUs, the Python runtime for everything else."""
    if requested is ModelFormat.AUTO:
        return ModelFormat.VLLM if task is Task.TEXT_GENERATION and device == "gpu" else ModelFormat.PYTHON
    if requested is ModelFormat.VLLM and task is not Task.TEXT_GENERATION:
        raise BuildError(f"--format vllm serves text-generation only, not {task.value}; use python or onnx")
    if requested is ModelFormat.VLLM and device != "gpu":
        raise BuildError("--format vllm needs --device gpu (vLLM's Triton backend runs on GPUs)")
    if requested is ModelFormat.ONNX and task is Task.TEXT_GENERATION:
        raise BuildError("--format onnx covers encoder tasks only; text-generation uses python or vllm")
    return requested


def resolve_dtype(requested: DType, device: str, model_format: ModelFormat) -> str:
    if model_format is ModelFormat.ONNX:
        if requested not in (DType.AUTO, DType.FLOAT32):
            raise BuildError(
                "--format onnx exports float32; on GPUs TensorRT runs it in FP16. "
                "Leave --dtype auto or float32"
            )
        return "float32"
    if requested is DType.AUTO:
        return "float16" if device == "gpu" else "float32"
    return requested.value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compute_digest(fetched: FetchedCheckpoint, options: BuildOptions) -> str:
    """Identity of a repository: checkpoint content, revision, build options and builder version."""
    relevant = dataclasses.asdict(options)
    relevant.pop("source")  # the same bytes from another place make the same repository
    calibration = relevant.pop("calibration_file")  # its content counts, not where it lies
    relevant["calibration"] = _sha256(Path(calibration)) if calibration else None
    identity = {
        "builder": __version__,
        "runtime": _sha256(RUNTIME_FILE),
        "generation_runtime": _sha256(GENERATION_RUNTIME_FILE),
        "revision": fetched.revision or options.revision,
        "options": {
            key: (value.value if hasattr(value, "value") else value) for key, value in relevant.items()
        },
        "files": {name: _sha256(fetched.path / name) for name in fetched.files},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=list).encode()).hexdigest()


def read_record(repository: Path) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads((repository / RECORD_FILE).read_text())
        return record
    except (OSError, json.JSONDecodeError):
        return None


def _string_warmup_file(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<I", len(data)) + data)


def _load_tokenizer(info: CheckpointInfo, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(info.path), trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise BuildError(f"cannot load the checkpoint's tokenizer: {exc}") from exc
    if info.task is Task.TOKEN_CLASSIFICATION and not tokenizer.is_fast:
        raise BuildError("token-classification needs a fast tokenizer (tokenizer.json) for character offsets")
    if info.task is Task.FILL_MASK and tokenizer.mask_token is None:
        raise BuildError("fill-mask needs a tokenizer with a mask token; this one has none")
    return tokenizer


def load_model(info: CheckpointInfo, trust_remote_code: bool) -> tuple[Any, dict[str, Any]]:
    """Load the task's Auto class on CPU in float32, with transformers' loading report (missing and
    unexpected weights); weights never come from pickles without weights_only."""
    import torch
    import transformers

    auto_class = {
        Task.TEXT_CLASSIFICATION: transformers.AutoModelForSequenceClassification,
        Task.TOKEN_CLASSIFICATION: transformers.AutoModelForTokenClassification,
        Task.FEATURE_EXTRACTION: transformers.AutoModel,
        Task.FILL_MASK: transformers.AutoModelForMaskedLM,
        Task.TEXT_GENERATION: transformers.AutoModelForCausalLM,
    }[info.task]
    try:
        model, loading = auto_class.from_pretrained(
            str(info.path),
            dtype=torch.float32,
            trust_remote_code=trust_remote_code,
            use_safetensors=info.weights == "safetensors",
            output_loading_info=True,
        )
    except Exception as exc:
        raise BuildError(f"cannot load the checkpoint's weights for {info.task.value}: {exc}") from exc
    return model.eval(), loading


# The runtime pools last_hidden_state itself and never runs a base model's pooler, so a checkpoint
# without one (every token-classification checkpoint) still serves feature-extraction correctly.
_UNUSED_BY_TASK: dict[Task, re.Pattern[str]] = {Task.FEATURE_EXTRACTION: re.compile(r"(^|\.)pooler\.")}


def _supported_tasks(info: CheckpointInfo, trained_for: Task | None) -> list[Task]:
    if trained_for is None:
        return []
    tasks = [trained_for]
    # A masked-LM checkpoint is a pretrained encoder: its hidden states are what feature-extraction
    # serves, and the dropped MLM head is not a task's head.
    if trained_for is Task.FILL_MASK or info.sentence_transformers is not None:
        tasks.append(Task.FEATURE_EXTRACTION)
    return tasks


def check_task_fits(info: CheckpointInfo, loading: dict[str, Any] | None, allow_new_head: bool) -> None:
    """Refuse a task whose head the checkpoint does not hold: weights transformers would initialise at
    random, or a checkpoint whose architectures (and unexpected head weights) say it was trained for
    another task. Serving either gives confident garbage; `allow_new_head` builds it anyway."""
    trained_for = None if info.needs_remote_code else task_of_architectures(info.architectures)
    if info.sentence_transformers is not None and info.task is Task.FEATURE_EXTRACTION:
        trained_for = Task.FEATURE_EXTRACTION
    supported = _supported_tasks(info, trained_for)
    unused = _UNUSED_BY_TASK.get(info.task)
    missing = sorted(
        key for key in (loading or {}).get("missing_keys", ()) if unused is None or not unused.search(key)
    )
    unexpected = sorted((loading or {}).get("unexpected_keys", ()))
    problems = []
    if missing:
        problems.append(
            f"its {info.task.value} weights {_key_list(missing)} are not in the checkpoint and would be "
            "newly initialised (random)"
        )
    if trained_for is not None and info.task not in supported:
        dropped = f", its head weights {_key_list(unexpected)} would be dropped" if unexpected else ""
        problems.append(f"the checkpoint was trained for {trained_for.value}{dropped}")
    if not problems or allow_new_head:
        return
    names = ", ".join(info.architectures) or "none stated"
    offered = ", ".join(task.value for task in supported) or "unknown (no architecture it names is known)"
    raise BuildError(
        f"task {info.task.value} does not fit this checkpoint: {'; '.join(problems)}. "
        f"Its architectures: {names}; tasks it supports: {offered}. Choose one of those with --task "
        "(spec.model.task), or pass --allow-new-head (spec.model.allowNewHead: true) to build it "
        "anyway, e.g. to fine-tune a fresh head elsewhere"
    )


def _key_list(keys: list[str], shown: int = 4) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _max_sequence_length(info: CheckpointInfo, tokenizer: Any, requested: int | None) -> int:
    limits = [info.max_positions] if info.max_positions else []
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
        limits.append(tokenizer_limit)
    hard_limit = min(limits) if limits else None
    if requested is not None:
        if hard_limit is not None and requested > hard_limit:
            raise BuildError(
                f"--max-sequence-length {requested} exceeds the checkpoint's limit of {hard_limit}"
            )
        return requested
    if info.sentence_transformers and info.sentence_transformers.max_seq_length:
        limits.append(info.sentence_transformers.max_seq_length)
    if not limits:
        raise BuildError("the checkpoint states no maximum sequence length; pass --max-sequence-length")
    return min(limits)


def _copy_checkpoint(info: CheckpointInfo, target: Path, model: Any | None) -> None:
    """Copy config, tokenizer and weights; pickled weights are re-saved as safetensors on the way."""
    target.mkdir(parents=True, exist_ok=True)
    for name in info.files:
        if info.weights == "pickle" and (name.endswith(".bin") or name == "pytorch_model.bin.index.json"):
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(info.path / name, destination)
    if info.weights == "pickle":
        assert model is not None
        model.save_pretrained(str(target), safe_serialization=True)


def _validate_safetensors(info: CheckpointInfo) -> None:
    from safetensors import safe_open

    for name in info.files:
        if name.endswith(".safetensors"):
            try:
                with safe_open(str(info.path / name), framework="pt") as handle:
                    handle.keys()
            except Exception as exc:
                raise BuildError(f"corrupt weights file {name}: {exc}") from exc


def _runtime_parameters(
    info: CheckpointInfo, role: str, dtype: str, max_length: int, trust_remote_code: bool
) -> dict[str, str]:
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
    if info.task is Task.FILL_MASK:
        params["top_k"] = str(FILL_MASK_TOP_K)
    return params


def _kv_bytes_per_token(model: Any, dtype: str) -> int:
    """Bytes one token's keys and values take across all layers (what a sequence reserves per position)."""
    config = model.config.get_text_config()
    layers = int(getattr(config, "num_hidden_layers", 1))
    heads = int(getattr(config, "num_attention_heads", 1))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return 2 * layers * kv_heads * head_dim * (4 if dtype == "float32" else 2)


def _generation_parameters(options: BuildOptions, model: Any, dtype: str, max_length: int) -> dict[str, str]:
    from model_repo.runtime.generation import default_max_concurrent_sequences

    if options.max_tokens is not None and options.max_tokens >= max_length:
        raise BuildError(
            f"--max-tokens {options.max_tokens} leaves no room for a prompt in the model's context of "
            f"{max_length} tokens; use at most {max_length - 1}"
        )
    limit = options.max_tokens if options.max_tokens is not None else max_length - 1
    sequences = options.max_concurrent_sequences or default_max_concurrent_sequences(
        options.device, _kv_bytes_per_token(model, dtype), max_length
    )
    return {
        "max_concurrent_sequences": str(sequences),
        "max_queued_requests": str(QUEUED_PER_SEQUENCE * sequences),
        "max_tokens_limit": str(limit),
        "default_max_tokens": str(min(DEFAULT_MAX_TOKENS, limit)),
    }


def _instance_kind(device: str) -> str:
    return "KIND_GPU" if device == "gpu" else "KIND_CPU"


def _warmup_text(info: CheckpointInfo, tokenizer: Any) -> str:
    if info.task is Task.FILL_MASK:
        return f"Triton warms this {tokenizer.mask_token} up before the first request."
    return WARMUP_TEXT


def _write_python_model(
    repo: Path,
    info: CheckpointInfo,
    options: BuildOptions,
    tokenizer: Any,
    model: Any | None,
    dtype: str,
    max_length: int,
    hidden_size: int,
    extra_parameters: dict[str, str],
) -> list[Path]:
    model_dir = repo / options.model_name
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True)
    shutil.copyfile(RUNTIME_FILE, version_dir / "model.py")
    _copy_checkpoint(info, version_dir / "checkpoint", model)
    generation = info.task is Task.TEXT_GENERATION
    role = "generator" if generation else "encoder"
    parameters = _runtime_parameters(info, role, dtype, max_length, options.trust_remote_code)
    parameters.update(extra_parameters)
    warmup_file = "text_input" if generation else "TEXT"
    _string_warmup_file(model_dir / "warmup" / warmup_file, _warmup_text(info, tokenizer))
    text_input = ("TYPE_STRING", (1,), f'input_data_file: "{warmup_file}"')
    if generation:
        shutil.copyfile(GENERATION_RUNTIME_FILE, version_dir / "generation.py")
        parameters.update(_generation_parameters(options, model, dtype, max_length))
        (model_dir / "warmup" / "max_tokens").write_bytes(struct.pack("<i", 2))
        # Decoupled: one request streams many responses, so Triton's batcher stays out of the way.
        spec = ModelConfigSpec(
            name=options.model_name,
            backend="python",
            max_batch_size=0,
            inputs=GENERATION_INPUTS,
            outputs=task_outputs(info.task, 0, 0, 0),
            instance_kind=_instance_kind(options.device),
            instance_count=options.instances_per_device,
            decoupled=True,
            parameters=parameters,
            warmups=[
                Warmup(
                    "short_generation",
                    1,
                    {
                        "text_input": text_input,
                        "max_tokens": ("TYPE_INT32", (1,), 'input_data_file: "max_tokens"'),
                    },
                )
            ],
        )
    else:
        warmups = [Warmup("single", 1, {"TEXT": text_input})]
        if options.max_batch_size > 1:
            warmups.append(Warmup("full_batch", options.max_batch_size, {"TEXT": text_input}))
        spec = ModelConfigSpec(
            name=options.model_name,
            backend="python",
            max_batch_size=options.max_batch_size,
            inputs=[Tensor("TEXT", "TYPE_STRING", (1,))],
            outputs=task_outputs(info.task, len(info.labels), hidden_size, FILL_MASK_TOP_K),
            instance_kind=_instance_kind(options.device),
            instance_count=options.instances_per_device,
            dynamic_batching=True,
            max_queue_delay_us=options.max_queue_delay_us,
            preferred_batch_sizes=options.preferred_batch_sizes,
            response_cache=options.response_cache,
            parameters=parameters,
            warmups=warmups,
        )
    config_path = model_dir / "config.pbtxt"
    config_path.write_text(spec.render())
    return [config_path]


def _write_vllm_model(
    repo: Path, info: CheckpointInfo, options: BuildOptions, dtype: str, max_length: int, final_path: Path
) -> list[Path]:
    model_dir = repo / options.model_name
    version_dir = model_dir / "1"
    _copy_checkpoint(info, version_dir / "checkpoint", None)
    # vLLM's backend passes model.json to its engine verbatim and does not resolve relative paths, so the
    # checkpoint is named by the absolute path the repository will have: serve it where it was built.
    engine_args = {
        "model": str(final_path / options.model_name / "1" / "checkpoint"),
        "dtype": dtype,
        "max_model_len": max_length,
        "gpu_memory_utilization": 0.9,
        "tensor_parallel_size": 1,
        "trust_remote_code": options.trust_remote_code,
    }
    (version_dir / "model.json").write_text(json.dumps(engine_args, indent=2) + "\n")
    spec = ModelConfigSpec(
        name=options.model_name,
        backend="vllm",
        max_batch_size=0,
        inputs=[tensor for tensor in GENERATION_INPUTS if tensor.name in VLLM_INPUTS],
        outputs=[GENERATION_OUTPUTS[0]],
        instance_kind="KIND_MODEL",
        instance_count=1,
        decoupled=True,
    )
    config_path = model_dir / "config.pbtxt"
    config_path.write_text(spec.render())
    return [config_path]


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directories in one step (renameat2 RENAME_EXCHANGE); False where the kernel, the C
    library or the filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _replace_directory(staged: Path, out: Path) -> None:
    """Move `staged` to `out`. An existing `out` is exchanged with it in one step where the filesystem
    can, so a server reading `out` sees the old repository or the new one, never none; then the old one,
    now at `staged`, is removed."""
    if not out.exists():
        staged.rename(out)
        return
    if _exchange(staged, out):
        shutil.rmtree(staged, ignore_errors=True)
        return
    old = out.parent / f".{out.name}.old-{staged.parent.name}"
    out.rename(old)
    try:
        staged.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _tree(root: Path) -> list[str]:
    """Every file and symlink under `root`, relative, sorted (directories are implied by their files)."""
    found = []
    for directory, subdirectories, files in os.walk(root):
        base = Path(directory).relative_to(root)
        found += [str(base / name) for name in files]
        # A symlinked or empty directory is an entry of its own: nothing below it would name it.
        for name in subdirectories:
            path = Path(directory) / name
            if path.is_symlink() or not any(path.iterdir()):
                found.append(str(base / name) + "/")
    return sorted(found)


def _foreign_entries(out: Path, record: dict[str, Any]) -> list[str]:
    """What `out` holds beyond what the builder wrote there (the record lists its files)."""
    written = record.get("files")
    if isinstance(written, list):
        known = set(written) | {RECORD_FILE}
        return [entry for entry in _tree(out) if entry not in known]
    # Records of older builders list no files: their model directories all start with the model name.
    prefix = str(record.get("model_name") or "")
    return sorted(
        entry.name + ("/" if entry.is_dir() else "")
        for entry in out.iterdir()
        if entry.name != RECORD_FILE and not (prefix and entry.name.startswith(prefix))
    )


def check_output(out: Path, force: bool) -> None:
    """Refuse to replace what the builder did not write: a directory that is not one of its repositories,
    or one of its repositories that holds files it did not write. `force` replaces it regardless."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} exists and is not a directory")
    if force or not out.exists() or not any(out.iterdir()):
        return
    record = read_record(out)
    if record is None:
        entries = sorted(entry.name for entry in out.iterdir())
        raise BuildError(
            f"--out {out} is not empty and is not a repository this builder wrote (no {RECORD_FILE}); "
            f"it holds {_key_list(entries)}. A build replaces --out whole: choose another directory, or "
            "pass --force to delete what it holds"
        )
    foreign = _foreign_entries(out, record)
    if foreign:
        raise BuildError(
            f"--out {out} is a repository this builder wrote, but it also holds files the builder did not "
            f"write: {_key_list(foreign)}. A build replaces the repository whole (Triton would take a "
            "foreign directory for a model); move them elsewhere, or pass --force to delete them"
        )


def build_repository(
    options: BuildOptions, out: Path, progress: Progress = lambda _m: None, force: bool = False
) -> BuildResult:
    """Build the repository for `options` at `out`, atomically; a matching digest there is a cache hit.

    The builder writes `out` and its own hidden siblings (`.<name>.tmp-*`) only: a directory it did not
    write is refused unless `force`, and in a cache volume of `<digest>` directories the other digests'
    repositories are never touched."""
    _check_options(options)
    out = out.absolute()
    check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        download_dir = workdir / "download"
        download_dir.mkdir()
        progress(f"fetching {options.source}")
        fetched = fetch(options.source, options.revision, download_dir, options.trust_remote_code, progress)
        info = inspect_checkpoint(fetched.path, fetched.files, options.task, options.trust_remote_code)
        model_format = resolve_format(options.format, info.task, options.device)
        dtype = resolve_dtype(options.dtype, options.device, model_format)
        if options.response_cache and info.task is Task.TEXT_GENERATION:
            raise BuildError(
                "--response-cache cannot be used with text-generation: streaming models can't cache"
            )
        digest = compute_digest(fetched, options)
        record = read_record(out)
        if record is not None and record.get("digest") == digest:
            progress(f"cache hit: {out} already holds repository {digest[:12]}")
            return BuildResult(digest, model_format, info.task, options.model_name, out, cache_hit=True)

        progress(
            f"inspected: task={info.task.value} model_type={info.model_type} format={model_format.value}"
        )
        tokenizer = _load_tokenizer(info, options.trust_remote_code)
        max_length = _max_sequence_length(info, tokenizer, options.max_sequence_length)
        _validate_safetensors(info)
        model = None
        loading = None
        if model_format is not ModelFormat.VLLM or info.weights == "pickle":
            progress("loading weights to verify them")
            model, loading = load_model(info, options.trust_remote_code)
        check_task_fits(info, loading, options.allow_new_head)
        hidden_size = info.hidden_size or 0
        if model is not None and info.task is Task.FEATURE_EXTRACTION:
            hidden_size = int(model.config.hidden_size)

        repo = workdir / "repo"
        repo.mkdir()
        gate = None
        # vLLM runs its own kernels in the dtype asked for; nothing of ours to measure there.
        if needs_gate(options.quantization, dtype) and model_format is not ModelFormat.VLLM:
            gate = GateSettings(
                options.accuracy_floor, Path(options.calibration_file) if options.calibration_file else None
            )
        optimised = None
        if model_format is ModelFormat.PYTHON:
            extra: dict[str, str] = {}
            if gate is not None:
                progress("measuring the optimised model against float32 (accuracy gate)")
                runtime = _runtime_parameters(info, "encoder", dtype, max_length, options.trust_remote_code)
                optimised = optimise_python(
                    info, model, tokenizer, options.quantization, dtype, max_length, runtime, gate, progress
                )
                extra = {"quantization": options.quantization.value}
                if optimised.keep_float:
                    extra["int8_keep_float"] = json.dumps(optimised.keep_float)
            configs = _write_python_model(
                repo, info, options, tokenizer, model, dtype, max_length, hidden_size, extra
            )
        elif model_format is ModelFormat.VLLM:
            configs = _write_vllm_model(repo, info, options, dtype, max_length, out)
        else:
            from model_repo.onnx_format import write_onnx_models

            configs = write_onnx_models(
                repo, info, options, tokenizer, model, max_length, hidden_size, progress
            )
            if gate is not None:
                progress("quantising the ONNX graph and measuring it against float32 (accuracy gate)")
                runtime = _runtime_parameters(info, "encoder", dtype, max_length, options.trust_remote_code)
                onnx_path = repo / f"{options.model_name}_onnx" / "1" / "model.onnx"
                optimised = optimise_onnx(info, onnx_path, tokenizer, max_length, runtime, gate, progress)
        if optimised is not None:
            progress(optimised.report.summary())
            (repo / ACCURACY_FILE).write_text(json.dumps(optimised.report.as_json(), indent=2) + "\n")
        for config_path in configs:
            validate_config(config_path.read_text(), str(config_path.relative_to(repo)))

        record = {
            "digest": digest,
            "format": model_format.value,
            "task": info.task.value,
            "model_name": options.model_name,
            "builder_version": __version__,
            "source": options.source,
            "revision": fetched.revision or options.revision,
            "dtype": dtype,
            "quantization": options.quantization.value,
            "accuracy": optimised.report.as_json() if optimised is not None else None,
            "device": options.device,
            "max_sequence_length": max_length,
            "labels": list(info.labels),
            "mask_token": tokenizer.mask_token if info.task is Task.FILL_MASK else None,
            "checkpoint_files": list(fetched.files),
            "allow_new_head": options.allow_new_head,
            # What the builder wrote: a later build replaces exactly these and refuses anything else.
            "files": _tree(repo),
        }
        (repo / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        # Checked again at the swap: a file written into --out during the build is not ours to delete.
        check_output(out, force)
        _replace_directory(repo, out)
        progress(f"wrote {model_format.value} repository {digest[:12]} to {out}")
        return BuildResult(digest, model_format, info.task, options.model_name, out, cache_hit=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
