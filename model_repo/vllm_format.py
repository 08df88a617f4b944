"""The `vllm` format: the checkpoint served by Triton's vLLM backend (text-generation on GPUs), with the
same request contract as the `python` format's generator."""

from __future__ import annotations

import json
from pathlib import Path

from model_repo.checkpoint import PreparedCheckpoint, copy_checkpoint
from model_repo.configs import GENERATION_INPUTS, GENERATION_OUTPUTS, ModelConfigSpec
from model_repo.options import BuildOptions

# The inputs Triton's vLLM backend reads as tensors; the rest of the contract goes in sampling_parameters.
VLLM_INPUTS = ("text_input", "stream", "sampling_parameters", "exclude_input_in_output")


def write(repo: Path, options: BuildOptions, prepared: PreparedCheckpoint, final_path: Path) -> list[Path]:
    """Write `<name>` (checkpoint, model.json, config.pbtxt) into `repo`, to be served from `final_path`."""
    model_dir = repo / options.model_name
    version_dir = model_dir / "1"
    copy_checkpoint(prepared.info, version_dir / "checkpoint", prepared.model)
    # vLLM's backend passes model.json to its engine verbatim and does not resolve relative paths, so the
    # checkpoint is named by the absolute path the repository will have: serve it where it was built.
    engine_args = {
        "model": str(final_path / options.model_name / "1" / "checkpoint"),
        "dtype": prepared.dtype,
        "max_model_len": prepared.max_length,
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
