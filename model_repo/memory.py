"""The memory a built repository is expected to take on its device, recorded in modeldeploy.json
(`memory`) so that the operator can place models on a shared server only where they fit.

An estimate from the architecture, not a measurement: the weights in the served dtype (per instance:
each Python-backend instance holds its own copy), plus the activation budget of one forward pass at the
largest batch and sequence length the model accepts, plus, for text-generation, the KV cache its
sequence slots reserve. A process's fixed costs (the stub's interpreter and torch, a CUDA context) are
not a model's and are left to the server's own overhead.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_repo.checkpoint import CheckpointInfo
from model_repo.options import BuildOptions, Task
from model_repo.runtime.decoding import PREFILL_TOKEN_BUDGET

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Live tensors of one encoder layer, in hidden-size units per token: input, Q, K, V, attention output,
# residual and norm buffers (≈ 6) — the intermediate (feed-forward) block and attention scores are added
# from the architecture.
_HIDDEN_BUFFERS = 6
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    activation_bytes: int
    kv_cache_bytes: int
    instances: int

    @property
    def total_bytes(self) -> int:
        return self.instances * (self.weights_bytes + self.activation_bytes + self.kv_cache_bytes)

    def as_json(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes}


def weights_bytes(model: Any, dtype: str, quantization: str = "none") -> int:
    """Parameter bytes in the served dtype; int8 quantisation keeps Linear weights in one byte each."""
    import torch

    size = DTYPE_BYTES.get(dtype, 4)
    total = 0
    quantised: set[int] = set()
    if quantization == "int8":
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                quantised.add(id(module.weight))
                total += module.weight.numel()
    for parameter in model.parameters():
        if id(parameter) not in quantised:
            total += parameter.numel() * size
    return int(total)


def checkpoint_weights_bytes(path: Path, files: tuple[str, ...]) -> int:
    """Weight file sizes as stored (for a format whose weights the builder never loads, e.g. vLLM)."""
    return sum((path / name).stat().st_size for name in files if name.endswith(WEIGHT_FILE_SUFFIXES))


def activation_bytes(config: dict[str, Any], dtype: str, batch: int, sequence: int) -> int:
    """Peak live activations of one layer's forward pass for [batch, sequence] tokens."""
    size = DTYPE_BYTES.get(dtype, 4)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or config.get("d_model") or 0)
    heads = int(config.get("num_attention_heads") or config.get("n_head") or 1)
    intermediate = int(config.get("intermediate_size") or config.get("n_inner") or 4 * hidden)
    tokens = batch * sequence
    per_token = _HIDDEN_BUFFERS * hidden + intermediate
    scores = 2 * batch * heads * sequence * sequence  # attention scores and their softmax
    return int((tokens * per_token + scores) * size)


def prefill_group_rows(max_sequence_length: int) -> int:
    """Rows of the largest prefill group at the full context: the generation runtime prefills prompts that
    arrive together as one padded batch of up to PREFILL_TOKEN_BUDGET tokens (a longer prompt alone)."""
    return max(1, math.ceil(PREFILL_TOKEN_BUDGET / max(1, max_sequence_length)))


def for_build(
    options: BuildOptions, info: CheckpointInfo, model: Any, dtype: str, max_length: int
) -> MemoryEstimate:
    """The estimate for a repository the builder writes (`model` is None where it loads no weights)."""
    from model_repo import python_format

    weights = (
        weights_bytes(model, dtype, options.quantization.value)
        if model is not None
        else checkpoint_weights_bytes(info.path, info.files)
    )
    batching = options.batching()
    kv = 0
    if info.task is Task.TEXT_GENERATION:
        # Prefill runs the largest group; decoding moves one token per live sequence, and each sequence
        # slot reserves its full context in the KV cache.
        activations = activation_bytes(info.config, dtype, prefill_group_rows(max_length), max_length)
        if model is not None:
            slots = python_format.generation_parameters(options, model, dtype, max_length)
            sequences = int(slots["max_concurrent_sequences"])
            kv = python_format.kv_bytes_per_token(model, dtype) * max_length * sequences
    else:
        activations = activation_bytes(info.config, dtype, batching.max_batch_size, max_length)
    return MemoryEstimate(weights, activations, kv, batching.instances_per_device)
