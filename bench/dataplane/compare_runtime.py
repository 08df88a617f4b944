"""Before/after of the encoder runtime in one process: an older `model.py` (e.g. `git show
b623fe6:model_repo/runtime/model.py > /tmp/before.py`) against this tree's, both initialised with the same
repository config as `bench.dataplane.profile` does, on the same random draws of 32 workload texts,
alternating before/after per batch, with the same length plan forced on both (their load-time
calibrations differ on a busy machine). Prints median wall and CPU time per batch.

    .venv/bin/python -m bench.dataplane.compare_runtime /tmp/before.py [--models tiny-bert] [--batches 24]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.common.sentences import load_texts
from bench.dataplane.profile import model_config_json
from bench.dataplane.run import prepare_model
from bench.dataplane.servers import OURS_MODEL_NAME


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare(key: str, before_path: Path, batches: int) -> dict[str, Any]:
    from model_repo.build import build_repository
    from model_repo.options import BuildOptions

    with tempfile.TemporaryDirectory(prefix="bench-compare-") as temporary:
        work = Path(temporary)
        model = prepare_model(key, work, None)
        options = BuildOptions(source=f"file://{model.path}", model_name=OURS_MODEL_NAME)
        built = build_repository(options, work / "repository")
        args = {
            "model_config": model_config_json(built.path),
            "model_repository": str(built.path / OURS_MODEL_NAME),
            "model_version": "1",
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
        }
        after = _load(built.path / OURS_MODEL_NAME / "1" / "model.py", "runtime_after").TritonPythonModel()
        after.initialize(args)
        before = _load(before_path, "runtime_before").TritonPythonModel()
        before.initialize(args)
        before._encoder_response = lambda results: None  # needs Triton's pb_utils
        after.role.group_overhead = before.group_overhead

        def run_before(texts: list[str]) -> None:
            before._run_encoder([(i, i, 1) for i in range(len(texts))], texts, [None] * len(texts))

        runs: dict[str, Callable[[list[str]], Any]] = {"before": run_before, "after": after.role.encode}
        rng = random.Random(0)
        workload = list(load_texts())
        draws = [rng.sample(workload, 32) for _ in range(batches)]
        for texts in draws[:2]:  # untimed: one-off per-shape costs
            for run in runs.values():
                run(texts)
        wall: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        for index, texts in enumerate(draws):
            for name in list(runs) if index % 2 == 0 else list(reversed(runs)):
                started, cpu_started = time.perf_counter(), time.process_time()
                runs[name](texts)
                wall[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - cpu_started)
    return {
        name: {
            "wall_ms_median": round(1000 * statistics.median(wall[name]), 2),
            "cpu_ms_median": round(1000 * statistics.median(cpu[name]), 2),
        }
        for name in runs
    } | {"planner_overhead_tokens": before.group_overhead, "load_1min": round(os.getloadavg()[0], 1)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dataplane.compare_runtime", description=__doc__)
    parser.add_argument("before", type=Path, help="the older runtime's model.py")
    parser.add_argument("--models", default="tiny-bert")
    parser.add_argument("--batches", type=int, default=24)
    args = parser.parse_args(argv)
    for key in args.models.split(","):
        print(key, json.dumps(compare(key, args.before, args.batches)), flush=True)


if __name__ == "__main__":
    main()
