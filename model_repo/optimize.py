"""Cheaper models for serving: int8 dynamic quantisation and bfloat16, each checked by the accuracy gate.

int8 quantises every Linear layer (python format: PyTorch's dynamic quantisation with per-channel
weights; onnx format: ONNX Runtime's `quantize_dynamic` on the exported graph's MatMuls). Small encoders
have a few layers whose activations carry outliers, and quantising those costs most of the accuracy: when
the fully quantised model misses the floor, the layers are ranked by how much each one alone distorts the
output, and the worst are kept in float32, one more at a time, until the gate passes (or none is left).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_repo.accuracy import (
    BATCH,
    GATED_METRIC,
    AccuracyReport,
    Forward,
    calibration_texts,
    encoder_metrics,
    gate,
    generation_metrics,
    onnx_forward,
    torch_forward,
)
from model_repo.checkpoint import CheckpointInfo
from model_repo.errors import BuildError
from model_repo.options import Quantization, Task
from model_repo.output_dir import read_record
from model_repo.runtime.model import (
    SMOOTHING_FILE,
    SMOOTHING_STRENGTH,
    quantize_int8,
    read_smoothing,
    smoothing_scales,
)

Progress = Callable[[str], None]
SELECTION_MARGIN = 0.25


@dataclass(frozen=True)
class GateSettings:
    floor: float | None
    calibration_file: Path | None


@dataclass(frozen=True)
class Optimised:
    report: AccuracyReport
    keep_float: list[str]
    # Layer name -> the input scales its int8 version is smoothed with (float32, one per input channel).
    smoothing: dict[str, Any] = field(default_factory=dict)


def save_smoothing(version_dir: Path, smoothing: dict[str, Any]) -> None:
    """Write the scales into the model's version directory as `SMOOTHING_FILE`, the name the config's
    `int8_smoothing` parameter gives the runtime (`read_smoothing`)."""
    target = version_dir / SMOOTHING_FILE
    partial = target.with_name(f".{SMOOTHING_FILE}.partial")
    with partial.open("wb") as handle:
        np.savez(handle, **{name: np.asarray(scales, dtype=np.float32) for name, scales in smoothing.items()})
    partial.replace(target)


@dataclass(frozen=True)
class Int8Choice:
    """What a built python-format int8 model serves: `quantize_int8(model, keep_float, smoothing)`."""

    keep_float: list[str]
    smoothing: dict[str, Any] | None


def built_int8_choice(repository: Path) -> Int8Choice:
    """The int8 choice of the one model in a built repository, as its runtime loads it: the layers kept in
    float32 (the build's record) and the smoothed layers' scales (its version directory's file, if any)."""
    record = read_record(repository) or {}
    optimisation = (record.get("accuracy") or {}).get("optimisation") or {}
    if "layers_float32" not in optimisation:
        raise BuildError(f"{repository} holds no int8 build (its record has no int8 layer choice)")
    (config,) = repository.glob("*/config.pbtxt")
    scales = config.parent / "1" / SMOOTHING_FILE
    return Int8Choice(
        list(optimisation["layers_float32"]), read_smoothing(str(scales)) if scales.exists() else None
    )


def _output_name(task: Task) -> str:
    return "last_hidden_state" if task is Task.FEATURE_EXTRACTION else "logits"


def _input_names(tokenizer: Any) -> list[str]:
    return [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]


def _distortion(reference: list[Any], candidate: list[Any]) -> float:
    """Mean absolute difference of raw outputs relative to the reference's mean magnitude."""
    diff = sum(float(np.abs(a - b).mean()) for a, b in zip(reference, candidate, strict=True))
    scale = sum(float(np.abs(a).mean()) for a in reference)
    return diff / max(scale, 1e-12)


def _raw_outputs(forward: Forward, tokenizer: Any, texts: Sequence[str], max_length: int) -> list[Any]:
    outputs = []
    for start in range(0, len(texts), BATCH):
        batch = tokenizer(
            list(texts[start : start + BATCH]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        types = batch["token_type_ids"].astype(np.int64) if "token_type_ids" in batch else None
        outputs.append(
            forward(batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64), types)
        )
    return outputs


def _input_maxima(
    reference: Forward, model: Any, tokenizer: Any, texts: Sequence[str], max_length: int
) -> dict[str, Any]:
    """Each Linear layer's largest input per channel over the calibration texts' real tokens (padding
    rows left out: the runtime's unpadded forward never sees them)."""
    import torch

    current: dict[str, Any] = {}
    maxima: dict[str, Any] = {}

    def recorder(name: str) -> Callable[..., None]:
        def record(_module: Any, inputs: tuple[Any, ...], _output: Any) -> None:
            x = inputs[0].detach()
            mask = current.get("mask")
            token_rows = mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape)
            rows = x[mask] if token_rows else x
            peak = rows.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
            maxima[name] = torch.maximum(maxima[name], peak) if name in maxima else peak

        return record

    def tracking(input_ids: Any, attention: Any, types: Any) -> Any:
        current["mask"] = torch.from_numpy(attention).bool()
        return reference(input_ids, attention, types)

    hooks = [
        module.register_forward_hook(recorder(name))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    ]
    try:
        _raw_outputs(tracking, tokenizer, texts, max_length)
    finally:
        for hook in hooks:
            hook.remove()
    return maxima


def _select_float_layers(
    layers: Sequence[str],
    metrics_keeping: Callable[[list[str]], dict[str, float]],
    distortion_alone: Callable[[str], float],
    metric: str,
    floor: float,
    progress: Progress,
) -> tuple[list[str], dict[str, float]]:
    """The fewest layers (most distorting first) kept in float32 for `metric` to clear `floor` with a
    margin, at most half of them; the metrics of the last attempt come back with the choice.

    The margin (a quarter of the distance to 1) is there because the calibration set is small: a choice
    that only just clears the floor on it would fall below it on other texts as often as not.
    """
    target = floor + (1.0 - floor) * SELECTION_MARGIN
    metrics = metrics_keeping([])
    progress(f"int8, all {len(layers)} linear layers: {metric} {metrics[metric]:.4f} (floor {floor})")
    if metrics[metric] >= target:
        return [], metrics
    progress("ranking layers by how much quantising each one alone distorts the output")
    ranked = sorted(layers, key=distortion_alone, reverse=True)
    kept: list[str] = []
    best: tuple[list[str], dict[str, float]] | None = None
    for layer in ranked[: len(layers) // 2]:
        kept.append(layer)
        metrics = metrics_keeping(kept)
        if metrics[metric] >= floor and best is None:
            best = (list(kept), metrics)
        if metrics[metric] >= target:
            best = (list(kept), metrics)
            break
    if best is None:
        return kept, metrics
    progress(
        f"int8 with {len(best[0])} of {len(layers)} layers kept in float32: {metric} {best[1][metric]:.4f}"
    )
    return best


def optimise_python(
    info: CheckpointInfo,
    model: Any,
    tokenizer: Any,
    quantization: Quantization,
    dtype: str,
    max_length: int,
    runtime: dict[str, str],
    settings: GateSettings,
    progress: Progress,
) -> Optimised:
    """Measure the python format's optimised model (built exactly as the runtime builds it) against
    `model` in float32; raises BuildError when the gate fails."""
    import torch

    texts, label, _ = calibration_texts(settings.calibration_file)
    task = info.task
    metric, default_floor = GATED_METRIC[task]
    floor = default_floor if settings.floor is None else settings.floor
    optimisation: dict[str, Any] = {"quantization": quantization.value, "dtype": dtype}
    if task is Task.TEXT_GENERATION:
        if quantization is not Quantization.NONE:
            raise BuildError(
                "--quantization int8 is not offered for text-generation: its accuracy and speed are not "
                "measured yet; use --dtype bfloat16 on a CPU that has it, or a GPU"
            )
        candidate = copy.deepcopy(model).to(torch.bfloat16)
        metrics = generation_metrics(model, candidate, tokenizer, texts)
        return Optimised(gate(task, metrics, optimisation, label, len(texts), settings.floor), [])

    names = _input_names(tokenizer)
    output = _output_name(task)
    reference = torch_forward(model, output, names)

    def measure(candidate_model: Any) -> dict[str, float]:
        candidate = torch_forward(candidate_model, output, names)
        return encoder_metrics(task, reference, candidate, tokenizer, texts, max_length, runtime, info.labels)

    if quantization is Quantization.NONE:  # bfloat16
        candidate_model = copy.deepcopy(model).to(torch.bfloat16)
        return Optimised(
            gate(task, measure(candidate_model), optimisation, label, len(texts), settings.floor), []
        )

    modules = dict(model.named_modules())
    layers = [n for n, m in modules.items() if isinstance(m, torch.nn.Linear)]
    baseline = _raw_outputs(reference, tokenizer, texts, max_length)

    def distortion(candidate_model: Any) -> float:
        candidate = _raw_outputs(torch_forward(candidate_model, output, names), tokenizer, texts, max_length)
        return _distortion(baseline, candidate)

    smoothing: dict[str, Any] = {}
    whole = measure(quantize_int8(model, []))
    if whole[metric] >= floor + (1.0 - floor) * SELECTION_MARGIN:
        progress(f"int8, all {len(layers)} linear layers: {metric} {whole[metric]:.4f} (floor {floor})")
        kept: list[str] = []
        metrics = whole
    else:
        # Each layer quantised alone, plain and smoothed: smoothed where that distorts less, and ranked by
        # the better of the two.
        maxima = _input_maxima(reference, model, tokenizer, texts, max_length)
        distortions: dict[str, float] = {}
        for layer in layers:
            others = [n for n in layers if n != layer]
            distortions[layer] = distortion(quantize_int8(model, others))
            if layer not in maxima:  # not run on these texts
                continue
            scales = smoothing_scales(maxima[layer], modules[layer].weight)
            smoothed = distortion(quantize_int8(model, others, {layer: scales}))
            if smoothed < distortions[layer]:
                smoothing[layer], distortions[layer] = scales, smoothed
        progress(
            f"int8: all {len(layers)} linear layers, {metric} {whole[metric]:.4f}; smoothing the inputs of "
            f"{len(smoothing)} (those it makes more accurate alone)"
        )
        kept, metrics = _select_float_layers(
            layers,
            lambda keep: measure(quantize_int8(model, keep, smoothing)),
            distortions.__getitem__,
            metric,
            floor,
            progress,
        )
    smoothed_layers = sorted(name for name in smoothing if name not in kept)
    optimisation["scheme"] = "dynamic, per-channel weights" + (
        f", inputs smoothed (SmoothQuant, strength {SMOOTHING_STRENGTH}) on {len(smoothed_layers)} layers"
        if smoothed_layers
        else ""
    )
    optimisation["layers_int8"] = len(layers) - len(kept)
    optimisation["layers_float32"] = kept
    optimisation["layers_smoothed"] = smoothed_layers
    report = gate(task, metrics, optimisation, label, len(texts), settings.floor)
    return Optimised(report, kept, {name: smoothing[name] for name in smoothed_layers})


def _onnx_weight_matmuls(path: Path) -> list[str]:
    """MatMul nodes with a constant weight: the ones dynamic quantisation turns into int8."""
    import onnx

    graph = onnx.load(str(path)).graph
    constants = {init.name for init in graph.initializer}
    return [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and any(i in constants for i in node.input)
    ]


def _quantize_onnx(
    source: Path, target: Path, exclude: Sequence[str] = (), only: Sequence[str] | None = None
) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=list(exclude),
        nodes_to_quantize=list(only) if only is not None else None,
    )


def optimise_onnx(
    info: CheckpointInfo,
    onnx_path: Path,
    tokenizer: Any,
    max_length: int,
    runtime: dict[str, str],
    settings: GateSettings,
    progress: Progress,
) -> Optimised:
    """Replace the exported float32 graph at `onnx_path` by its int8 version, once it passes the gate."""
    texts, label, _ = calibration_texts(settings.calibration_file)
    task = info.task
    metric, default_floor = GATED_METRIC[task]
    floor = default_floor if settings.floor is None else settings.floor
    names = _input_names(tokenizer)
    output = _output_name(task)
    float_path = onnx_path.with_name("float32.onnx")
    onnx_path.rename(float_path)
    trial = onnx_path.with_name("trial.onnx")
    reference = onnx_forward(float_path, output, names)
    layers = _onnx_weight_matmuls(float_path)
    baseline = _raw_outputs(reference, tokenizer, texts, max_length)

    def keeping(keep: list[str]) -> dict[str, float]:
        _quantize_onnx(float_path, trial, exclude=keep)
        candidate = onnx_forward(trial, output, names)
        return encoder_metrics(task, reference, candidate, tokenizer, texts, max_length, runtime, info.labels)

    def alone(layer: str) -> float:
        _quantize_onnx(float_path, trial, only=[layer])
        return _distortion(
            baseline, _raw_outputs(onnx_forward(trial, output, names), tokenizer, texts, max_length)
        )

    try:
        kept, metrics = _select_float_layers(layers, keeping, alone, metric, floor, progress)
        optimisation: dict[str, Any] = {
            "quantization": Quantization.INT8.value,
            "dtype": "float32",
            "scheme": "onnxruntime dynamic, per-channel weights",
            "layers_int8": len(layers) - len(kept),
            "layers_float32": kept,
        }
        report = gate(task, metrics, optimisation, label, len(texts), settings.floor)
        _quantize_onnx(float_path, onnx_path, exclude=kept)
    finally:
        float_path.unlink(missing_ok=True)
        trial.unlink(missing_ok=True)
    return Optimised(report, kept)
