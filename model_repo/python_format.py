"""The `python` format: one Python-backend model that runs the checkpoint with PyTorch (the `encoder`
role for encoder tasks, the decoupled `generator` role with continuous batching for text-generation)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from model_repo import python_backend
from model_repo.checkpoint import CheckpointInfo, PreparedCheckpoint, copy_checkpoint
from model_repo.configs import (
    GENERATION_INPUTS,
    ModelConfigSpec,
    Warmup,
    encoder_inputs,
    task_outputs,
)
from model_repo.errors import BuildError
from model_repo.options import BuildOptions, Task

DEFAULT_MAX_TOKENS = 64
# Requests that may wait for a sequence slot, per slot, before new ones are refused as UNAVAILABLE.
QUEUED_PER_SEQUENCE = 4
WARMUP_TEXT = "Triton warms this model up so that the first real request is not the slow one."
WARMUP_QUERY = "what does Triton warm up?"


def kv_bytes_per_token(model: Any, dtype: str) -> int:
    """Bytes one token's keys and values take across all layers (what a sequence reserves per position)."""
    config = model.config.get_text_config()
    layers = int(getattr(config, "num_hidden_layers", 1))
    heads = int(getattr(config, "num_attention_heads", 1))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return 2 * layers * kv_heads * head_dim * (4 if dtype == "float32" else 2)


def generation_parameters(options: BuildOptions, model: Any, dtype: str, max_length: int) -> dict[str, str]:
    from model_repo.runtime.generation import default_max_concurrent_sequences

    if options.max_tokens is not None and options.max_tokens >= max_length:
        raise BuildError(
            f"--max-tokens {options.max_tokens} leaves no room for a prompt in the model's context of "
            f"{max_length} tokens; use at most {max_length - 1}"
        )
    limit = options.max_tokens if options.max_tokens is not None else max_length - 1
    sequences = options.max_concurrent_sequences or default_max_concurrent_sequences(
        options.device, kv_bytes_per_token(model, dtype), max_length
    )
    return {
        "max_concurrent_sequences": str(sequences),
        "max_queued_requests": str(QUEUED_PER_SEQUENCE * sequences),
        "max_tokens_limit": str(limit),
        "default_max_tokens": str(min(DEFAULT_MAX_TOKENS, limit)),
    }


def _warmup_text(info: CheckpointInfo, tokenizer: Any) -> str:
    if info.task is Task.FILL_MASK:
        return f"Triton warms this {tokenizer.mask_token} up before the first request."
    return WARMUP_TEXT


def write(
    repo: Path, options: BuildOptions, prepared: PreparedCheckpoint, extra_parameters: dict[str, str]
) -> list[Path]:
    """Write `<name>` (runtime, checkpoint, warm-up, config.pbtxt) into `repo`; return its config path."""
    info, model, dtype, max_length = prepared.info, prepared.model, prepared.dtype, prepared.max_length
    model_dir = repo / options.model_name
    version_dir = model_dir / "1"
    generation = info.task is Task.TEXT_GENERATION
    pairs = info.task in (Task.TEXT_CLASSIFICATION, Task.TEXT_RANKING)
    role = "generator" if generation else "encoder"
    python_backend.install_runtime(version_dir, role, pairs=pairs)
    copy_checkpoint(info, version_dir / "checkpoint", model)
    parameters = python_backend.runtime_parameters(info, role, dtype, max_length, options.trust_remote_code)
    parameters.update(extra_parameters)
    warmup_file = "text_input" if generation else "TEXT"
    python_backend.write_string_warmup(
        model_dir / "warmup" / warmup_file, _warmup_text(info, prepared.tokenizer)
    )
    text_input = python_backend.string_warmup_input(warmup_file)
    if generation:
        parameters.update(generation_parameters(options, model, dtype, max_length))
        (model_dir / "warmup" / "max_tokens").write_bytes(struct.pack("<i", 2))
        # Decoupled: one request streams many responses, so Triton's batcher stays out of the way.
        spec = ModelConfigSpec(
            name=options.model_name,
            backend="python",
            max_batch_size=0,
            inputs=GENERATION_INPUTS,
            outputs=task_outputs(info.task, 0, 0, 0),
            instance_kind=python_backend.instance_kind(options.device),
            instance_count=options.batching().instances_per_device,
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
        warmup_inputs = {"TEXT": text_input}
        if info.task is Task.TEXT_RANKING:
            python_backend.write_string_warmup(model_dir / "warmup" / "QUERY", WARMUP_QUERY)
            warmup_inputs["QUERY"] = python_backend.string_warmup_input("QUERY")
        warmups = [Warmup("single", 1, warmup_inputs)]
        if options.batching().max_batch_size > 1:
            warmups.append(Warmup("full_batch", options.batching().max_batch_size, warmup_inputs))
        spec = ModelConfigSpec(
            name=options.model_name,
            backend="python",
            max_batch_size=options.batching().max_batch_size,
            inputs=encoder_inputs(info.task),
            outputs=task_outputs(
                info.task, len(info.labels), prepared.hidden_size, python_backend.FILL_MASK_TOP_K
            ),
            instance_kind=python_backend.instance_kind(options.device),
            instance_count=options.batching().instances_per_device,
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
