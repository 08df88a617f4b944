"""The `onnx` format: export the encoder, verify it against PyTorch, and write the ensemble
tokenizer (Python) → model (onnxruntime backend) → post-processing (Python)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model_repo import python_backend
from model_repo.checkpoint import CheckpointInfo, PreparedCheckpoint, is_tokenizer_file
from model_repo.configs import EnsembleStep, ModelConfigSpec, Tensor, Warmup, task_outputs
from model_repo.errors import BuildError
from model_repo.options import BuildOptions, Progress, Task

ONNX_TOLERANCE = 1e-3
OPSET = 17
TENSORRT_CACHE_ROOT = "/tmp/modeldeploy-trt-cache"
_ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    7: "TYPE_INT64",
    6: "TYPE_INT32",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    9: "TYPE_BOOL",
}
VERIFY_TEXTS = (
    "Triton serves this model.",
    "A much longer sentence, so that the batch needs padding and the dynamic sequence axis is exercised.",
    "Short one",
)


def _graph_io(path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """Names, Triton dtypes and dims (batch dimension dropped) exactly as the exported graph declares."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}

    def tensors(values: Any) -> list[Tensor]:
        result = []
        for value in values:
            if value.name in initializers:
                continue
            tensor_type = value.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
            result.append(Tensor(value.name, _ONNX_TO_TRITON[tensor_type.elem_type], dims[1:]))
        return result

    return tensors(graph.input), tensors(graph.output)


def export_and_verify(
    model: Any, tokenizer: Any, info: CheckpointInfo, onnx_path: Path, max_length: int
) -> tuple[list[str], str, float]:
    """Export with dynamic batch and sequence axes; return input names, output name, max abs diff."""
    import numpy as np
    import onnxruntime
    import torch

    output_name = "last_hidden_state" if info.task is Task.FEATURE_EXTRACTION else "logits"
    accepted = ("input_ids", "attention_mask", "token_type_ids")
    input_names = [name for name in tokenizer.model_input_names if name in accepted]
    if "input_ids" not in input_names or "attention_mask" not in input_names:
        raise BuildError(
            f"the onnx format needs input_ids and attention_mask; the tokenizer gives {input_names}"
        )

    class Exported(torch.nn.Module):
        def __init__(self, wrapped: Any) -> None:
            super().__init__()
            self.wrapped = wrapped

        def forward(self, *args: Any) -> Any:
            return getattr(self.wrapped(**dict(zip(input_names, args, strict=True))), output_name)

    def encode(texts: list[str]) -> dict[str, Any]:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        return {name: batch[name].astype(np.int64) for name in input_names}

    samples = [encode(list(VERIFY_TEXTS)), encode([VERIFY_TEXTS[2]])]
    # References come first: exporting traces the model and may leave it altered.
    with torch.inference_mode():
        references = [
            getattr(model(**{k: torch.from_numpy(v) for k, v in sample.items()}), output_name).float().numpy()
            for sample in samples
        ]
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    axes[output_name] = {0: "batch"} if info.task is Task.TEXT_CLASSIFICATION else {0: "batch", 1: "sequence"}
    example = tuple(torch.from_numpy(samples[0][name]) for name in input_names)
    try:
        torch.onnx.export(
            Exported(model).eval(),
            example,
            str(onnx_path),
            input_names=input_names,
            output_names=[output_name],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    except Exception as exc:
        raise BuildError(f"ONNX export failed for {info.model_type}: {exc}; use --format python") from exc
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for sample, reference in zip(samples, references, strict=True):
        (got,) = session.run([output_name], sample)
        if reference.ndim == 3:  # padded positions carry no meaning; compare real tokens only
            mask = sample["attention_mask"].astype(bool)
            got, reference = got[mask], reference[mask]
        worst = max(worst, float(np.abs(got - reference).max()))
    if worst > ONNX_TOLERANCE:
        raise BuildError(
            f"the ONNX export differs from PyTorch by {worst:.2e} (tolerance {ONNX_TOLERANCE:.0e}); "
            "use --format python"
        )
    return input_names, output_name, worst


def _copy_tokenizer(info: CheckpointInfo, target: Path) -> None:
    target.mkdir(parents=True)
    for name in info.files:
        if name == "config.json" or is_tokenizer_file(name):
            shutil.copyfile(info.path / name, target / name)


def _tensorrt_optimization(model_name: str) -> str:
    return (
        "optimization { execution_accelerators { gpu_execution_accelerator: [ {\n"
        '  name: "tensorrt"\n'
        '  parameters { key: "precision_mode" value: "FP16" }\n'
        '  parameters { key: "trt_engine_cache_enable" value: "1" }\n'
        f'  parameters {{ key: "trt_engine_cache_path" value: "{TENSORRT_CACHE_ROOT}/{model_name}" }}\n'
        "} ] } }"
    )


def _python_step(
    name: str,
    options: BuildOptions,
    inputs: list[Tensor],
    outputs: list[Tensor],
    parameters: dict[str, str],
    *,
    dynamic_batching: bool = False,
    warmups: Sequence[Warmup] = (),
) -> ModelConfigSpec:
    """The config of the tokenizer or the post-processing model: the Python runtime, one instance on
    the CPU (string work; the ONNX model between them holds the device)."""
    return ModelConfigSpec(
        name=name,
        backend="python",
        max_batch_size=options.batching().max_batch_size,
        inputs=inputs,
        outputs=outputs,
        instance_kind="KIND_CPU",
        instance_count=1,
        parameters=parameters,
        dynamic_batching=dynamic_batching,
        max_queue_delay_us=options.max_queue_delay_us if dynamic_batching else 0,
        warmups=warmups,
    )


def write(repo: Path, options: BuildOptions, prepared: PreparedCheckpoint, progress: Progress) -> list[Path]:
    """Write `<name>` (ensemble), `<name>_tokenizer`, `<name>_onnx`, `<name>_postprocess`; return their
    config paths."""
    info, max_length = prepared.info, prepared.max_length
    name = options.model_name
    tokenizer_name, onnx_name, post_name = f"{name}_tokenizer", f"{name}_onnx", f"{name}_postprocess"
    onnx_dir = repo / onnx_name
    (onnx_dir / "1").mkdir(parents=True)
    onnx_path = onnx_dir / "1" / "model.onnx"
    progress("exporting to ONNX")
    input_names, output_name, max_diff = export_and_verify(
        prepared.model, prepared.tokenizer, info, onnx_path, max_length
    )
    progress(f"ONNX output matches PyTorch: max abs difference {max_diff:.2e}")
    graph_inputs, graph_outputs = _graph_io(onnx_path)
    (graph_output,) = [t for t in graph_outputs if t.name == output_name]

    needs_offsets = info.task is Task.TOKEN_CLASSIFICATION
    tokenizer_outputs = [Tensor(t.name, t.data_type, t.dims) for t in graph_inputs]
    if needs_offsets:
        tokenizer_outputs += [
            Tensor("OFFSETS", "TYPE_INT64", (-1, 2)),
            Tensor("SPECIAL_TOKENS_MASK", "TYPE_INT64", (-1,)),
        ]
    contract = task_outputs(info.task, len(info.labels), prepared.hidden_size, python_backend.FILL_MASK_TOP_K)
    text = Tensor("TEXT", "TYPE_STRING", (1,))
    configs = []

    for model_name, role in ((tokenizer_name, "tokenizer"), (post_name, "postprocess")):
        version = repo / model_name / "1"
        python_backend.install_runtime(version, role)
        _copy_tokenizer(info, version / "checkpoint")
    params = python_backend.runtime_parameters(
        info, "tokenizer", "float32", max_length, options.trust_remote_code
    )
    params["onnx_inputs"] = ",".join(input_names)
    python_backend.write_string_warmup(
        repo / tokenizer_name / "warmup" / "TEXT", "Triton warms this tokenizer up."
    )
    warmup_text = {"TEXT": python_backend.string_warmup_input("TEXT")}
    specs = [
        _python_step(
            tokenizer_name,
            options,
            [text],
            tokenizer_outputs,
            params,
            dynamic_batching=True,
            warmups=[Warmup("single", 1, warmup_text)],
        ),
        ModelConfigSpec(
            name=onnx_name,
            backend="onnxruntime",
            default_model_filename="model.onnx",
            max_batch_size=options.batching().max_batch_size,
            inputs=graph_inputs,
            outputs=graph_outputs,
            instance_kind=python_backend.instance_kind(options.device),
            instance_count=options.batching().instances_per_device,
            dynamic_batching=True,
            max_queue_delay_us=options.max_queue_delay_us,
            preferred_batch_sizes=options.preferred_batch_sizes,
            warmups=[
                Warmup("zeros", 1, {t.name: (t.data_type, (16,), "zero_data: true") for t in graph_inputs})
            ],
            extra=_tensorrt_optimization(onnx_name) if options.device == "gpu" else "",
        ),
    ]
    post_inputs = [graph_output, Tensor("attention_mask", "TYPE_INT64", (-1,))]
    if needs_offsets:
        post_inputs += [text, tokenizer_outputs[-2], tokenizer_outputs[-1]]
    if info.task is Task.FILL_MASK:
        post_inputs.append(Tensor("input_ids", "TYPE_INT64", (-1,)))
    post_params = python_backend.runtime_parameters(
        info, "postprocess", "float32", max_length, options.trust_remote_code
    )
    post_params["onnx_output"] = output_name
    specs.append(_python_step(post_name, options, post_inputs, contract, post_params))
    tokenizer_map = {t.name: t.name for t in tokenizer_outputs}
    specs.append(
        ModelConfigSpec(
            name=name,
            platform="ensemble",
            max_batch_size=options.batching().max_batch_size,
            inputs=[text],
            outputs=contract,
            response_cache=options.response_cache,
            ensemble_steps=[
                EnsembleStep(tokenizer_name, {"TEXT": "TEXT"}, tokenizer_map),
                EnsembleStep(onnx_name, {t.name: t.name for t in graph_inputs}, {output_name: output_name}),
                EnsembleStep(
                    post_name, {t.name: t.name for t in post_inputs}, {t.name: t.name for t in contract}
                ),
            ],
        )
    )
    # Triton loads a model only with at least one version directory, even an ensemble that has no files.
    (repo / name / "1").mkdir(parents=True)
    for spec in specs:
        path = repo / spec.name / "config.pbtxt"
        path.write_text(spec.render())
        configs.append(path)
    (repo / onnx_name / "verification.json").write_text(
        json.dumps({"max_abs_diff": max_diff, "tolerance": ONNX_TOLERANCE, "texts": list(VERIFY_TEXTS)})
        + "\n"
    )
    return configs
