"""Checkpoint → Triton model repository: fetch, inspect, digest, write, validate, rename into place."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_repo import __version__, memory, onnx_format, python_format, vllm_format
from model_repo.accuracy import ACCURACY_FILE
from model_repo.checkpoint import (
    CheckpointInfo,
    PreparedCheckpoint,
    inspect_checkpoint,
    task_of_architectures,
)
from model_repo.configs import validate_config
from model_repo.errors import BuildError
from model_repo.fetch import FetchedCheckpoint, fetch
from model_repo.optimize import GateSettings, Optimised, optimise_onnx, optimise_python, save_smoothing
from model_repo.options import (
    MAX_BATCH_SIZE_LIMIT,
    MAX_CONCURRENT_SEQUENCES,
    BuildOptions,
    DType,
    ModelFormat,
    Progress,
    Quantization,
    Task,
    auto_format,
    needs_gate,
)
from model_repo.output_dir import RECORD_FILE, check_output, key_list, read_record, replace_directory, tree
from model_repo.progress import BuildProgress, Stage, build_progress
from model_repo.python_backend import (
    GENERATION_RUNTIME_FILES,
    RANKING_RUNTIME_FILE,
    ROLE_RUNTIME_FILES,
    RUNTIME_FILE,
    SHARED_RUNTIME_FILES,
    runtime_parameters,
)
from model_repo.runtime.model import SMOOTHING_FILE
from model_repo.staging import staging_directory

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


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
    batching = options.batching()
    if not 1 <= batching.max_batch_size <= MAX_BATCH_SIZE_LIMIT:
        raise BuildError(
            f"--max-batch-size {batching.max_batch_size} must be between 1 and {MAX_BATCH_SIZE_LIMIT}"
        )
    if options.max_queue_delay_us < 0:
        raise BuildError("--max-queue-delay-us must not be negative")
    if batching.instances_per_device < 1:
        raise BuildError("--instances-per-device must be at least 1")
    for size in options.preferred_batch_sizes:
        if not 1 <= size <= batching.max_batch_size:
            raise BuildError(
                f"--preferred-batch-size {size} must be between 1 and "
                f"--max-batch-size {batching.max_batch_size}"
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
        from model_repo.runtime.model import this_cpu_has_native_bfloat16

        if not this_cpu_has_native_bfloat16():
            raise BuildError(
                "--dtype bfloat16: this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16 or bf16), so "
                "PyTorch would emulate it, slower than float32; use float32 or --quantization int8"
            )


def resolve_format(requested: ModelFormat, task: Task, device: str) -> ModelFormat:
    """The format to build: `auto` resolved for the task and device, or the one asked for if it fits."""
    if requested is ModelFormat.AUTO:
        resolved = auto_format(task, device)
        assert resolved is not None  # the task is known here
        return resolved
    if requested is ModelFormat.VLLM and task is not Task.TEXT_GENERATION:
        raise BuildError(f"--format vllm serves text-generation only, not {task.value}; use python or onnx")
    if requested is ModelFormat.VLLM and device != "gpu":
        raise BuildError("--format vllm needs --device gpu (vLLM's Triton backend runs on GPUs)")
    if requested is ModelFormat.ONNX and task is Task.TEXT_GENERATION:
        raise BuildError("--format onnx covers encoder tasks only; text-generation uses python or vllm")
    if requested is ModelFormat.ONNX and task is Task.TEXT_RANKING:
        raise BuildError("--format onnx does not cover text-ranking yet; use python (the default)")
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
    # What was asked for and the device default it resolves to build the same repository.
    relevant = dataclasses.asdict(dataclasses.replace(options, **dataclasses.asdict(options.batching())))
    relevant.pop("source")  # the same bytes from another place make the same repository
    calibration = relevant.pop("calibration_file")  # its content counts, not where it lies
    relevant["calibration"] = _sha256(Path(calibration)) if calibration else None
    identity = {
        "builder": __version__,
        "runtime": [_sha256(path) for path in (RUNTIME_FILE, *SHARED_RUNTIME_FILES)],
        "role_runtime": {role: _sha256(path) for role, path in ROLE_RUNTIME_FILES.items()},
        "generation_runtime": [_sha256(path) for path in GENERATION_RUNTIME_FILES],
        "ranking_runtime": _sha256(RANKING_RUNTIME_FILE),
        "revision": fetched.revision or options.revision,
        "options": {
            key: (value.value if hasattr(value, "value") else value) for key, value in relevant.items()
        },
        "files": {name: _sha256(fetched.path / name) for name in fetched.files},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=list).encode()).hexdigest()


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
        Task.TEXT_RANKING: transformers.AutoModelForSequenceClassification,
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
    # One head, two readings: a classifier of (pairs of) texts, or a cross-encoder scoring pairs.
    if trained_for is Task.TEXT_CLASSIFICATION:
        tasks.append(Task.TEXT_RANKING)
    if trained_for is Task.TEXT_RANKING:
        tasks.append(Task.TEXT_CLASSIFICATION)
    return tasks


def check_task_fits(info: CheckpointInfo, loading: dict[str, Any] | None, allow_new_head: bool) -> None:
    """Refuse a task whose head the checkpoint does not hold: weights transformers would initialise at
    random, or a checkpoint whose architectures (and unexpected head weights) say it was trained for
    another task. Serving either gives confident garbage; `allow_new_head` builds it anyway."""
    trained_for = None if info.needs_remote_code else task_of_architectures(info.architectures)
    if info.cross_encoder:
        trained_for = Task.TEXT_RANKING
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
            f"its {info.task.value} weights {key_list(missing)} are not in the checkpoint and would be "
            "newly initialised (random)"
        )
    if trained_for is not None and info.task not in supported:
        dropped = f", its head weights {key_list(unexpected)} would be dropped" if unexpected else ""
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


def _validate_safetensors(info: CheckpointInfo) -> None:
    from safetensors import safe_open

    for name in info.files:
        if name.endswith(".safetensors"):
            try:
                with safe_open(str(info.path / name), framework="pt") as handle:
                    handle.keys()
            except Exception as exc:
                raise BuildError(f"corrupt weights file {name}: {exc}") from exc


@dataclass(frozen=True)
class _Inspected:
    """What the inspect stage learned: enough to name the repository (its digest) before loading it."""

    fetched: FetchedCheckpoint
    info: CheckpointInfo
    model_format: ModelFormat
    dtype: str
    digest: str


def _inspect(options: BuildOptions, fetched: FetchedCheckpoint, progress: BuildProgress) -> _Inspected:
    info = inspect_checkpoint(fetched.path, fetched.files, options.task, options.trust_remote_code)
    model_format = resolve_format(options.format, info.task, options.device)
    dtype = resolve_dtype(options.dtype, options.device, model_format)
    if info.task is Task.TEXT_RANKING and needs_gate(options.quantization, dtype):
        raise BuildError(
            "text-ranking has no accuracy gate yet, so it is served in float32 or float16 only: "
            f"not quantization {options.quantization.value} / dtype {dtype}"
        )
    if options.response_cache and info.task is Task.TEXT_GENERATION:
        raise BuildError("--response-cache cannot be used with text-generation: streaming models can't cache")
    digest = compute_digest(fetched, options)
    return _Inspected(fetched, info, model_format, dtype, digest)


def _load_and_verify(
    options: BuildOptions, inspected: _Inspected, progress: BuildProgress
) -> PreparedCheckpoint:
    """Load the tokenizer, then (unless vLLM serves the files as they are) the weights, which verifies
    them and that the task's head is in the checkpoint."""
    info = inspected.info
    model_format = inspected.model_format.value
    progress.stage(
        Stage.LOAD, f"inspected: task={info.task.value} model_type={info.model_type} format={model_format}"
    )
    tokenizer = _load_tokenizer(info, options.trust_remote_code)
    max_length = _max_sequence_length(info, tokenizer, options.max_sequence_length)
    _validate_safetensors(info)
    model = None
    loading = None
    if inspected.model_format is not ModelFormat.VLLM or info.weights == "pickle":
        progress.stage(Stage.VERIFY, "loading weights to verify them")
        model, loading = load_model(info, options.trust_remote_code)
    check_task_fits(info, loading, options.allow_new_head)
    hidden_size = info.hidden_size or 0
    if model is not None and info.task is Task.FEATURE_EXTRACTION:
        hidden_size = int(model.config.hidden_size)
    return PreparedCheckpoint(info, tokenizer, model, inspected.dtype, max_length, hidden_size)


def _export(
    options: BuildOptions,
    inspected: _Inspected,
    prepared: PreparedCheckpoint,
    repo: Path,
    out: Path,
    progress: BuildProgress,
) -> tuple[list[Path], Optimised | None]:
    """Write the format's model directories into `repo`, optimised and gated where asked; the configs
    written, and the optimisation's measurement."""
    info, model_format = inspected.info, inspected.model_format
    dtype, max_length = prepared.dtype, prepared.max_length
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
            progress.stage(Stage.OPTIMISE, "measuring the optimised model against float32 (accuracy gate)")
            runtime = runtime_parameters(info, "encoder", dtype, max_length, options.trust_remote_code)
            optimised = optimise_python(
                info,
                prepared.model,
                prepared.tokenizer,
                options.quantization,
                dtype,
                max_length,
                runtime,
                gate,
                progress,
            )
            extra = {"quantization": options.quantization.value}
            if optimised.keep_float:
                extra["int8_keep_float"] = json.dumps(optimised.keep_float)
            if optimised.smoothing:
                extra["int8_smoothing"] = SMOOTHING_FILE
        progress.stage(Stage.EXPORT, "writing the python repository")
        configs = python_format.write(repo, options, prepared, extra)
        if optimised is not None and optimised.smoothing:
            save_smoothing(repo / options.model_name / "1", optimised.smoothing)
    elif model_format is ModelFormat.VLLM:
        progress.stage(Stage.EXPORT, "writing the vllm repository")
        configs = vllm_format.write(repo, options, prepared, final_path=out)
    else:
        progress.stage(Stage.EXPORT, "writing the onnx repository")
        configs = onnx_format.write(repo, options, prepared, progress)
        if gate is not None:
            progress.stage(
                Stage.OPTIMISE, "quantising the ONNX graph and measuring it against float32 (accuracy gate)"
            )
            runtime = runtime_parameters(info, "encoder", dtype, max_length, options.trust_remote_code)
            onnx_path = repo / f"{options.model_name}_onnx" / "1" / "model.onnx"
            optimised = optimise_onnx(
                info, onnx_path, prepared.tokenizer, max_length, runtime, gate, progress
            )
    if optimised is not None:
        progress(optimised.report.summary())
        (repo / ACCURACY_FILE).write_text(json.dumps(optimised.report.as_json(), indent=2) + "\n")
    return configs, optimised


def _write_record(
    options: BuildOptions,
    inspected: _Inspected,
    prepared: PreparedCheckpoint,
    repo: Path,
    optimised: Optimised | None,
) -> None:
    info = inspected.info
    record = {
        "digest": inspected.digest,
        "format": inspected.model_format.value,
        "task": info.task.value,
        "model_name": options.model_name,
        "builder_version": __version__,
        "source": options.source,
        "revision": inspected.fetched.revision or options.revision,
        "dtype": prepared.dtype,
        "quantization": options.quantization.value,
        "accuracy": optimised.report.as_json() if optimised is not None else None,
        "device": options.device,
        "max_sequence_length": prepared.max_length,
        "labels": list(info.labels),
        "mask_token": prepared.tokenizer.mask_token if info.task is Task.FILL_MASK else None,
        "checkpoint_files": list(inspected.fetched.files),
        "allow_new_head": options.allow_new_head,
        # Expected device memory: what a shared server's placement counts (model_repo.memory).
        "memory": memory.for_build(
            options, info, prepared.model, prepared.dtype, prepared.max_length
        ).as_json(),
        # What the builder wrote: a later build replaces exactly these and refuses anything else.
        "files": tree(repo),
    }
    (repo / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")


def build_repository(
    options: BuildOptions, out: Path, progress: Progress = lambda _m: None, force: bool = False
) -> BuildResult:
    """Build the repository for `options` at `out`, atomically; a matching digest there is a cache hit.

    Stages (each reported to `progress`, see model_repo.progress): download, inspect (the digest: a cache
    hit ends here), load and verify, optimise (with an accuracy gate), export, write (validate, record,
    swap into place).

    The builder writes `out` and its own hidden siblings (`.<name>.tmp-*`) only: a directory it did not
    write is refused unless `force`, and in a cache volume of `<digest>` directories the other digests'
    repositories are never touched."""
    reporter = build_progress(progress)
    _check_options(options)
    out = out.absolute()
    check_output(out, force)
    # Locked while this build runs; a killed build's is removed by the next build beside it.
    staging = contextlib.ExitStack()
    workdir = staging.enter_context(staging_directory(out))
    try:
        download_dir = workdir / "download"
        download_dir.mkdir()
        reporter.stage(Stage.DOWNLOAD, f"fetching {options.source}")
        fetched = fetch(options.source, options.revision, download_dir, options.trust_remote_code, reporter)
        reporter.stage(Stage.INSPECT, "inspecting the checkpoint")
        inspected = _inspect(options, fetched, reporter)
        result = BuildResult(
            inspected.digest,
            inspected.model_format,
            inspected.info.task,
            options.model_name,
            out,
            cache_hit=False,
        )
        record = read_record(out)
        if record is not None and record.get("digest") == inspected.digest:
            reporter.stage(Stage.DONE, f"cache hit: {out} already holds repository {inspected.digest[:12]}")
            return dataclasses.replace(result, cache_hit=True)
        prepared = _load_and_verify(options, inspected, reporter)
        repo = workdir / "repo"
        repo.mkdir()
        configs, optimised = _export(options, inspected, prepared, repo, out, reporter)
        reporter.stage(Stage.WRITE, "validating the configs and writing the repository")
        for config_path in configs:
            validate_config(config_path.read_text(), str(config_path.relative_to(repo)))
        _write_record(options, inspected, prepared, repo, optimised)
        # Checked again at the swap: a file written into --out during the build is not ours to delete.
        check_output(out, force)
        replace_directory(repo, out)
        reporter.stage(
            Stage.DONE, f"wrote {inspected.model_format.value} repository {inspected.digest[:12]} to {out}"
        )
        return result
    finally:
        staging.close()
