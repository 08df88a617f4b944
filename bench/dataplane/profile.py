"""Where a served batch's time goes inside the stub: the generated runtime (`model.py`) run in this
process on batches like the ones Triton's dynamic batcher hands it, timed per stage, and the forward pass
under torch's profiler.

The runtime is the one `modeldeploy build` writes, initialised with the repository's own config (so it
calibrates its batch planner the same way), and its encoder's `encode` is timed stage by stage:
tokenisation, the forward passes (padding, copies to and from the device, the passes and the on-device
reduction of their outputs), post-processing on the host. Only building the response tensors is left
out (they need Triton's `pb_utils`). Comparing a batch's time here with Triton's compute time per
execution under load (perf_analyzer's server-side figures in the data-plane run) leaves the cost of the
stub's IPC: request tensors in, response tensors out, through shared memory.

    .venv/bin/python -m bench.dataplane.profile [--models minilm] [--device cpu|cuda] [--batch 32]
        [--quantization int8]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.common.checkpoints import BenchModel
from bench.common.machine import describe_machine, machine_line
from bench.common.report import RESULTS_DIR, fmt, markdown_table, write_json, write_text
from bench.common.sentences import load_texts
from bench.dataplane.run import MODEL_KEYS, prepare_model
from bench.dataplane.servers import OURS_MODEL_NAME, torch_dtype

STAGES = ("tokenize", "forward", "postprocess")


def load_runtime(repository: Path) -> ModuleType:
    """The repository's own copy of the runtime, imported under a private name (as the stub would)."""
    path = repository / OURS_MODEL_NAME / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("modeldeploy_profiled_runtime", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_config_json(repository: Path) -> str:
    """config.pbtxt as the JSON Triton hands to `initialize` (protobuf field names, as Triton does)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    text = (repository / OURS_MODEL_NAME / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    return json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True))


class StageTimer:
    """Wraps the encoder's stage methods and adds up their wall time. `forward_groups` covers padding,
    the copies to and from the device and the forward passes, and ends when the device has finished; it
    counts the passes through `_forward`."""

    def __init__(self, encoder: Any) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.passes = 0
        for stage, method in (
            ("tokenize", "tokenize"),
            ("forward", "forward_groups"),
            ("postprocess", "host_outputs"),
        ):
            setattr(encoder, method, self._timed(stage, getattr(encoder, method)))
        # Padded passes go through `_forward`, unpadded ones (one per batch) through `_unpadded_pass`.
        for method in ("_forward", "_unpadded_pass"):
            setattr(encoder, method, self._counted(getattr(encoder, method)))

    def _counted(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.passes += 1
            return function(*args, **kwargs)

        return counted

    def _timed(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - started

        return wrapper

    def reset(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.passes = 0


@contextlib.contextmanager
def built_runtime(
    model: BenchModel,
    device: str,
    workdir: Path,
    quantization: str = "none",
    notes: dict[str, Any] | None = None,
) -> Iterator[Any]:
    """The runtime of the repository `modeldeploy build` writes (`quantization` int8: behind its accuracy
    gate, whose choice of layers goes into `notes`)."""
    from model_repo.build import build_repository
    from model_repo.options import BuildOptions, Quantization
    from model_repo.output_dir import read_record

    options = BuildOptions(
        source=f"file://{model.path}",
        model_name=OURS_MODEL_NAME,
        device="gpu" if device == "cuda" else "cpu",
        quantization=Quantization(quantization),
    )
    built = build_repository(options, workdir / "repository")
    optimisation = ((read_record(built.path) or {}).get("accuracy") or {}).get("optimisation") or {}
    if notes is not None and optimisation:
        notes["int8"] = {
            "layers_int8": optimisation.get("layers_int8"),
            "layers_float32": optimisation.get("layers_float32"),
            "layers_smoothed": len(optimisation.get("layers_smoothed") or []),
        }
    module = load_runtime(built.path)
    runtime = module.TritonPythonModel()
    runtime.initialize(
        {
            "model_config": model_config_json(built.path),
            "model_repository": str(built.path / OURS_MODEL_NAME),
            "model_version": "1",
            "model_instance_kind": "GPU" if device == "cuda" else "CPU",
            "model_instance_device_id": "0",
        }
    )
    # Response tensors need Triton's pb_utils; the profile stops at the batch's output arrays.
    yield runtime.role


def random_batches(texts: Sequence[str], batch: int, count: int, seed: int) -> list[list[str]]:
    """Random draws of `batch` workload texts: what a server's queue holds, unlike the raw limit's
    length-sorted batches."""
    rng = random.Random(seed)
    return [rng.sample(list(texts), batch) for _ in range(count)]


def run_batch(encoder: Any, texts: list[str]) -> None:
    encoder.encode(texts)


def _self_us(event: Any, device: str) -> float:
    """An operator's own time (children excluded): on the GPU, device time (older torch: cuda time)."""
    if device == "cuda":
        return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))
    return float(event.self_cpu_time_total)


def profile_model(
    model: BenchModel,
    device: str,
    batch: int,
    batches: int,
    profiled: int,
    workdir: Path,
    quantization: str = "none",
) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    texts = load_texts()
    draws = random_batches(texts, batch, batches, seed=0)
    notes: dict[str, Any] = {}
    with built_runtime(model, device, workdir, quantization, notes) as runtime:
        timer = StageTimer(runtime)
        for texts_ in draws[:2]:  # untimed: one-off per-shape costs
            run_batch(runtime, texts_)
        timer.reset()
        per_batch: list[float] = []
        for texts_ in draws:
            started = time.perf_counter()
            run_batch(runtime, texts_)
            per_batch.append(time.perf_counter() - started)
        stages = dict(timer.seconds)
        passes = timer.passes
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as profiler:
            for texts_ in draws[:profiled]:
                run_batch(runtime, texts_)
        sort_key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
        events = profiler.key_averages()
        total_us = sum(_self_us(event, device) for event in events)
        top = sorted(events, key=lambda event: _self_us(event, device), reverse=True)[:12]
        operators = [
            {
                "name": event.key,
                "calls": event.count,
                "self_us": round(_self_us(event, device), 1),
                "share": round(_self_us(event, device) / total_us, 3) if total_us else None,
            }
            for event in top
        ]
        overhead = runtime.group_overhead
        unpadded = runtime.unpadded is not None
        # The runtime's thread count per pass width (CPU), as its tuner left it after these batches.
        threads = runtime.threads.choices() if runtime.threads is not None else None
        del runtime
        if device == "cuda":
            torch.cuda.empty_cache()
    total = sum(per_batch)
    return {
        "description": model.description,
        "batch": batch,
        "batches": len(draws),
        "planner_overhead_tokens": overhead,
        "unpadded": unpadded,
        "forward_passes_per_batch": round(passes / len(draws), 2),
        "batch_ms_median": round(1000 * statistics.median(per_batch), 2),
        "batch_ms_mean": round(1000 * total / len(draws), 2),
        "texts_per_s": round(batch * len(draws) / total, 1),
        "stages_ms_per_batch": {stage: round(1000 * s / len(draws), 2) for stage, s in stages.items()},
        "stages_share": {stage: round(s / total, 3) for stage, s in stages.items()},
        "profiled_batches": profiled,
        "profile_sorted_by": sort_key,
        "top_operators": operators,
        "threads_by_width_group": threads,
        **notes,
    }


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine_line(report['machine'])}. Device {report['device']}, {report['dtype']}.",
    ]
    for key, result in report["models"].items():
        stages = result["stages_ms_per_batch"]
        shares = result["stages_share"]
        forward = (
            "Forward: unpadded (one pass over the batch's real tokens)"
            if result.get("unpadded")
            else f"Batch planner: one pass costs {result['planner_overhead_tokens']} tokens"
        )
        lines += [
            "",
            f"#### {key}: the runtime in-process, {result['batches']} random batches of {result['batch']} "
            "workload texts",
            "",
            f"{forward} → {result['forward_passes_per_batch']} forward passes per batch; median batch "
            f"{fmt(result['batch_ms_median'], 2)} ms, {fmt(result['texts_per_s'])} texts/s."
            + (
                f" int8: {result['int8']['layers_int8']} linear layers int8 "
                f"({result['int8']['layers_smoothed']} of them with smoothed inputs), "
                f"{len(result['int8']['layers_float32'] or [])} kept in float32."
                if "int8" in result
                else ""
            )
            + (
                f" Threads per pass by width group: {result['threads_by_width_group']}."
                if result.get("threads_by_width_group")
                else ""
            ),
            "",
            markdown_table(
                ["stage", "ms per batch (mean)", "share of the batch"],
                [[stage, fmt(stages[stage], 2), f"{shares[stage]:.0%}"] for stage in STAGES]
                + [
                    [
                        "rest (planning, scattering rows into the batch arrays)",
                        fmt(max(0.0, result["batch_ms_mean"] - sum(stages.values())), 2),
                        f"{max(0.0, 1 - sum(shares.values())):.0%}",
                    ]
                ],
            ),
            "",
            f"torch profiler over {result['profiled_batches']} batches, top operators by "
            f"{result['profile_sorted_by'].replace('_', ' ')}:",
            "",
            markdown_table(
                ["operator", "calls", "self ms", "share"],
                [
                    [
                        f"`{op['name']}`",
                        str(op["calls"]),
                        fmt(op["self_us"] / 1000, 1),
                        "-" if op["share"] is None else f"{op['share']:.0%}",
                    ]
                    for op in result["top_operators"]
                ],
            ),
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.dataplane.profile", description=__doc__)
    parser.add_argument("--models", default="minilm", help=f"comma-separated, of {', '.join(MODEL_KEYS)}")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=32, help="texts per batch (default: max batch size)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--profiled", type=int, default=5, help="batches under torch's profiler")
    parser.add_argument("--minilm-path", type=Path, default=None)
    parser.add_argument(
        "--quantization", choices=("none", "int8"), default="none", help="int8: the build's gated int8 model"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in models if name not in MODEL_KEYS]
    if unknown or not models:
        parser.error(f"--models: choose from {', '.join(MODEL_KEYS)}")
    if args.batch < 1 or args.batches < 1 or not 0 < args.profiled <= args.batches:
        parser.error("--batch and --batches must be positive, --profiled between 1 and --batches")
    machine = describe_machine()
    if args.device == "cuda" and not machine["gpus"]:
        raise SystemExit("--device cuda: torch sees no CUDA device on this machine")
    arguments = list(sys.argv[1:] if argv is None else argv)
    report: dict[str, Any] = {
        "benchmark": "dataplane-profile",
        "command": " ".join([".venv/bin/python", "-m", "bench.dataplane.profile", *arguments]),
        "device": args.device,
        "dtype": torch_dtype(args.device) + (", int8" if args.quantization == "int8" else ""),
        "machine": machine,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as temporary:
        workdir = Path(temporary)
        for key in models:
            model = prepare_model(key, workdir, args.minilm_path)
            (workdir / key).mkdir()
            report["models"][key] = profile_model(
                model, args.device, args.batch, args.batches, args.profiled, workdir / key, args.quantization
            )
    stem = f"dataplane-profile-{args.device}" + ("-int8" if args.quantization == "int8" else "")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{stem}.json", report)
    markdown = render_markdown(report)
    write_text(args.out / f"{stem}.md", markdown)
    print(markdown, flush=True)
    return report


if __name__ == "__main__":
    main()
