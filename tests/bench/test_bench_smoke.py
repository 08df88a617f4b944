"""The benchmarks run end to end against real servers (tritonserver, uvicorn) on a tiny random model with a
handful of requests. They prove the benchmark code works and writes sane results; they assert nothing
about speed (performance claims are made by the benchmarks themselves, see bench/README.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.triton


def test_tutorial_baseline_config_is_a_valid_model_config(tmp_path: Path) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from bench.baselines import TUTORIAL_MODEL_NAME, write_tutorial_repository
    from bench.common.checkpoints import make_tiny_bert_classifier

    model = make_tiny_bert_classifier(tmp_path / "tiny", hidden_size=32)
    repository = write_tutorial_repository(model, tmp_path / "repo", "cpu", "float32")
    config = text_format.Parse(
        (repository / TUTORIAL_MODEL_NAME / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.backend == "python"
    assert config.max_batch_size == 0  # the tutorial's: no dynamic batching
    assert not config.HasField("dynamic_batching")
    assert [tensor.name for tensor in config.input] == ["prompt"]
    assert (repository / TUTORIAL_MODEL_NAME / "1" / "model.py").exists()


def test_dataplane_benchmark_runs_every_contender(tmp_path: Path) -> None:
    from bench.dataplane.run import run

    report = run(
        [
            "--quick", "--models", "tiny-bert", "--concurrency", "1,4",
            "--duration", "1.2", "--rounds", "2", "--warmup", "0.3", "--raw-batch-sizes", "1,4",
            "--raw-seconds", "0.05", "--texts", "24", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    stem = tmp_path / "dataplane-cpu-tiny-bert-quick"
    assert json.loads(stem.with_suffix(".json").read_text()) == json.loads(json.dumps(report))
    assert stem.with_suffix(".png").stat().st_size > 0
    markdown = stem.with_suffix(".md").read_text()
    assert "| ours | 1 |" in markdown and "| baseline-b | 4 |" in markdown

    model = report["models"]["tiny-bert"]
    assert {(p["batch_size"], p["grouped"]) for p in model["raw"]["points"]} == {
        (1, False),
        (4, False),
        (4, True),
    }
    assert all(p["throughput_tps"] > 0 and 0 < p["padding_efficiency"] <= 1 for p in model["raw"]["points"])
    assert set(model["contenders"]) == {"ours", "baseline-a", "baseline-b"}
    for name, contender in model["contenders"].items():
        assert "error" not in contender, contender.get("error")
        assert [level["concurrency"] for level in contender["levels"]] == [1, 4]
        for level in contender["levels"]:
            assert level["windows"] == 2  # two rounds, pooled
            assert level["errors"] == 0, level["first_error"]
            assert level["requests"] > 0
            assert 0 < level["p50_ms"] <= level["p99_ms"]
            if name == "baseline-b":
                assert "triton" not in level  # FastAPI has no Triton metrics
            else:
                triton = level["triton"]
                assert triton["requests"] > 0
                assert triton["queue_us"] >= 0 and triton["compute_infer_us"] > 0
                assert triton["average_batch"] >= 1
    # The tutorial model never batches.
    assert all(level["triton"]["average_batch"] == 1 for level in model["contenders"]["baseline-a"]["levels"])
    ratios = {row["name"]: row for row in model["ratios"]}
    assert len(ratios) == 4
    assert all(
        row["value"] is not None and row["value"] > 0 and row["met"] in (True, False)
        for row in ratios.values()
    )
    assert "onnx" in next(iter(report["not_run"]))


def test_dataplane_benchmark_runs_the_optimised_contenders_beside_float32(tmp_path: Path) -> None:
    from bench.dataplane.run import run

    report = run(
        [
            "--quick", "--models", "tiny-bert", "--contenders", "ours,ours-int8,ours-bf16",
            "--concurrency", "4", "--duration", "1", "--warmup", "0.3", "--raw-batch-sizes", "1,4",
            "--raw-seconds", "0.05",
            "--texts", "24", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    model = report["models"]["tiny-bert"]
    assert set(model["contenders"]) == {"ours", "ours-int8", "ours-bf16"}
    for contender in model["contenders"].values():
        assert "error" not in contender, contender.get("error")
        assert contender["levels"][0]["errors"] == 0 and contender["levels"][0]["requests"] > 0
    optimised = model["optimised"]
    int8 = optimised["ours-int8"]
    assert int8["gate"]["gate"]["passed"] and int8["gate"]["optimisation"]["quantization"] == "int8"
    assert set(int8["workload_accuracy"]) == {"label_agreement", "max_probability_difference"}
    assert {(p["batch_size"], p["grouped"]) for p in int8["raw"]["points"]} == {
        (1, False),
        (4, False),
        (4, True),
    }
    assert optimised["ours-bf16"]["gate"]["optimisation"]["dtype"] == "bfloat16"
    assert model["contenders"]["ours-int8"]["config"]["accuracy"] == int8["gate"]
    ratios = {row["name"]: row for row in model["ratios"]}
    assert ratios["ours-int8 at c=4 / float32 raw length-grouped limit"]["met"] in (True, False)
    assert ratios["ours-int8 at c=4 / int8 raw length-grouped limit"]["value"] > 0
    markdown = (tmp_path / "dataplane-cpu-tiny-bert-quick.md").read_text()
    assert (
        "| ours-int8 | int8 / float32;" in markdown and "Raw in-process limit of the int8 model" in markdown
    )


def test_autoscaling_benchmark_replays_the_hpa(tmp_path: Path) -> None:
    from bench.autoscaling.run import STEPS, SWEEP_FRACTIONS, run

    report = run(
        [
            "--model", "tiny-bert", "--interval", "0.2", "--metrics", "queueComputeRatio",
            "--sweep-level", "0.3", "--calibration", "0.8", "--max-replicas", "4", "--max-foreign-cpu", "1",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    stem = tmp_path / "autoscaling-cpu"
    assert json.loads(stem.with_suffix(".json").read_text())["runs"].keys() == {"queueComputeRatio"}
    assert stem.with_suffix(".png").stat().st_size > 0
    assert "queueComputeRatio (target" in stem.with_suffix(".md").read_text()

    assert report["capacity_rps"] > 0
    assert [row["utilisation_offered"] for row in report["sweep"]] == list(SWEEP_FRACTIONS)
    run_ = report["runs"]["queueComputeRatio"]
    assert run_["target"] == report["api_default_targets"]["queueComputeRatio"]
    timeline = run_["timeline"]
    expected_points = sum(step.duration_s for step in STEPS) * report["settings"]["time_scale"] / 0.2
    assert abs(len(timeline) - expected_points) <= 1
    assert {point["step"] for point in timeline} == {"idle", "light", "heavy"}
    assert [point["t_s"] for point in timeline] == sorted(point["t_s"] for point in timeline)
    for point in timeline:
        assert 1 <= point["replicas"] <= 4
        assert point["errors"] == 0
        assert point["metric"] is None or (point["metric"] >= 0 and not math.isnan(point["metric"]))
    # Nothing was sent before the first step ended: the metric is 0 (or absent while the window fills).
    assert all(point["metric"] in (0, None) for point in timeline[:2])
    assert set(run_["assessment"]) >= {
        "light_max_replicas",
        "heavy_final_replicas",
        "idle_back_to_min_after_s",
    }


def test_generation_benchmark_runs_every_contender(tmp_path: Path) -> None:
    from bench.generation.run import render_markdown, run

    report = run(
        [
            "--layers", "1", "--hidden", "64", "--max-tokens", "8", "--min-prompt", "8", "--max-prompt", "32",
            "--concurrency", "1,2", "--warmup-s", "0.5", "--window-s", "2", "--workdir", str(tmp_path),
            "--no-write",
        ]
    )  # fmt: skip
    for name in ("ours", "baseline", "in_process"):
        assert [level["clients"] for level in report[name]["levels"]] == [1, 2]
        assert all(level["tokens_per_s"] > 0 for level in report[name]["levels"])
    for name in ("ours", "baseline"):
        for level in report[name]["levels"]:
            assert level["errors"] == 0, level["first_error"]
            assert 0 < level["ttft_p50_ms"] <= level["ttft_p99_ms"]
    assert report["ratios"]["ours/baseline tokens/s at 2"] > 0
    assert "| 2 |" in render_markdown(report)
