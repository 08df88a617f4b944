"""The benchmarks run end to end against real servers (tritonserver, uvicorn) on a tiny random model with a
handful of requests. They prove the benchmark code works and writes sane results; they assert nothing
about speed (performance claims are made by the benchmarks themselves, see bench/README.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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
    assert report["settings"]["perf_analyzer"]["version"].startswith("Perf Analyzer Version")
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
                assert level["client"]["generator"].startswith("python")  # perf_analyzer can't drive it
            else:
                # perf_analyzer drove the Triton contenders, two runs (rounds) per level.
                assert level["client"]["generator"].startswith("perf_analyzer")
                assert [run["concurrency"] for run in level["perf_analyzer_runs"]] == [
                    level["concurrency"]
                ] * 2
                assert 0 < level["client"]["cores"] < 2 and level["client"]["cpu_us_per_request"] > 0
                triton = level["triton"]
                assert triton["requests"] > 0
                assert triton["queue_us"] >= 0 and triton["compute_infer_us"] > 0
                assert triton["average_batch"] >= 1
    check = model["contenders"]["ours"]["client_check"]
    assert "error" not in check, check.get("error")
    assert check["concurrency"] == 4 and check["two_clients_concurrency_each"] == 2
    assert check["two_clients_rps"] > 0 and len(check["runs"]) == 2
    assert "Client check" in markdown and "pa: " in markdown
    # The tutorial model never batches.
    assert all(level["triton"]["average_batch"] == 1 for level in model["contenders"]["baseline-a"]["levels"])
    ratios = {row["name"]: row for row in model["ratios"]}
    assert len(ratios) == 4
    assert all(
        row["value"] is not None and row["value"] > 0 and row["met"] in (True, False)
        for row in ratios.values()
    )
    assert "onnx" in next(iter(report["not_run"]))


def test_the_tiny_embedder_runs_through_the_sidecar_with_and_without_shared_calls(tmp_path: Path) -> None:
    from bench.dataplane.run import run

    report = run(
        [
            "--quick", "--models", "tiny-embed", "--contenders", "ours,ours-openai,ours-openai-one-call-each",
            "--concurrency", "8", "--duration", "1.2", "--rounds", "1", "--warmup", "0.3",
            "--raw-batch-sizes", "8", "--raw-seconds", "0.05", "--texts", "24", "--loadgen", "python",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    model = report["models"]["tiny-embed"]
    assert model["task"] == "feature-extraction"
    assert set(model["contenders"]) == {"ours", "ours-openai", "ours-openai-one-call-each"}
    for name in ("ours-openai", "ours-openai-one-call-each"):
        contender = model["contenders"][name]
        # The sidecar's answers against Triton's, whether requests shared calls or not.
        assert contender["answers"]["same_answers"] is True, contender["answers"]
        assert contender["answers"]["cosine_min"] >= 0.9999
        assert all(level["errors"] == 0 and level["throughput_rps"] > 0 for level in contender["levels"])


def test_dataplane_benchmark_runs_the_optimised_contenders_beside_float32(tmp_path: Path) -> None:
    """ours-bf16 runs where the CPU has bf16 arithmetic; elsewhere it is reported as not run, with why,
    and the others run all the same."""
    from bench.dataplane.run import run
    from model_repo.runtime.model import this_cpu_has_native_bfloat16

    bf16 = this_cpu_has_native_bfloat16()

    report = run(
        [
            "--quick", "--models", "tiny-bert", "--contenders", "ours,ours-int8,ours-bf16",
            "--concurrency", "4", "--duration", "1", "--warmup", "0.3", "--raw-batch-sizes", "1,4",
            "--raw-seconds", "0.05",
            "--texts", "24", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    model = report["models"]["tiny-bert"]
    assert set(model["contenders"]) == {"ours", "ours-int8", *(["ours-bf16"] if bf16 else [])}
    assert ("ours-bf16" in report["not_run"]) is not bf16
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
    if bf16:
        assert optimised["ours-bf16"]["gate"]["optimisation"]["dtype"] == "bfloat16"
    else:
        assert "ours-bf16" not in optimised
        assert report["not_run"]["ours-bf16"] == "this CPU has no bf16 arithmetic"
    assert model["contenders"]["ours-int8"]["config"]["accuracy"] == int8["gate"]
    ratios = {row["name"]: row for row in model["ratios"]}
    assert ratios["ours-int8 at c=4 / float32 raw length-grouped limit"]["met"] in (True, False)
    assert ratios["ours-int8 at c=4 / int8 raw length-grouped limit"]["value"] > 0
    markdown = (tmp_path / "dataplane-cpu-tiny-bert-quick.md").read_text()
    assert (
        "| ours-int8 | int8 / float32;" in markdown and "Raw in-process limit of the int8 model" in markdown
    )
    assert ("Not run: ours-bf16: this CPU has no bf16 arithmetic." in markdown) is not bf16


def test_perf_analyzer_drives_triton_with_the_workload_texts(tmp_path: Path) -> None:
    """perf_analyzer against the real tritonserver serving ours (tiny model) at two concurrencies: its
    figures parse, agree with each other and with Triton's own /metrics counters over the same runs."""
    from bench.common import perf_analyzer
    from bench.common.checkpoints import make_tiny_bert_classifier
    from bench.common.metrics import scrape
    from bench.common.sentences import load_texts
    from bench.dataplane.servers import serve_ours

    prefix = perf_analyzer.command_prefix()  # fails with the install command when it is missing
    texts = load_texts()[:16]
    model = make_tiny_bert_classifier(tmp_path / "tiny", hidden_size=32)
    (tmp_path / "ours").mkdir()
    with serve_ours(model, tmp_path / "ours", "cpu", {}) as endpoint:
        assert endpoint.target is not None and endpoint.metrics_url and endpoint.metrics_model
        data = perf_analyzer.write_input_data(texts, endpoint.target.input_name, tmp_path / "texts.json")
        before = scrape(endpoint.metrics_url, endpoint.metrics_model)
        runs = [
            run
            for concurrency in (1, 4)
            for run in perf_analyzer.measure(
                prefix, perf_analyzer.Load(endpoint.target, data, concurrency, 3.0, 8), tmp_path / "runs"
            )
        ]
        after = scrape(endpoint.metrics_url, endpoint.metrics_model)
    assert [run.concurrency for run in runs] == [1, 4]
    for run in runs:
        assert run.requests > 0 and run.throughput_rps > 0
        assert abs(run.window_s - 3.0) < 1.0  # three windows of 1 s
        assert 0 < run.p50_ms <= run.p90_ms <= run.p99_ms
        assert run.server["compute_infer"] > 0 and run.server["queue"] >= 0
        # One text per request, all counted by Triton: the server's statistics are read at the window's
        # edges, where up to `concurrency` requests in flight fall on one side or the other.
        assert abs(run.inference_count - run.requests) <= run.concurrency
        assert 1 <= run.average_batch <= run.concurrency
        assert run.client_requests == run.requests + 8 and run.client_cpu_s > 0
    # Triton served every request perf_analyzer counted (warm-up and windows; a few more finish after the
    # last window).
    served = after.get("nv_inference_request_success") - before.get("nv_inference_request_success")
    assert served >= sum(run.client_requests for run in runs)


def _autoscaling_run(tmp_path: Path, stem: str, metric: str, *arguments: str) -> tuple[dict[str, Any], str]:
    """One short run replaying `metric` alone; its JSON, plot and Markdown are written. Returns the report
    and the Markdown."""
    from bench.autoscaling.run import run

    report = run(
        [
            "--interval", "0.2", "--metrics", metric, "--calibration", "1", "--max-replicas", "4",
            "--max-foreign-cpu", "1", "--out", str(tmp_path), *arguments,
        ]
    )  # fmt: skip
    path = tmp_path / stem
    assert json.loads(path.with_suffix(".json").read_text())["runs"].keys() == {metric}
    assert path.with_suffix(".png").stat().st_size > 0
    markdown = path.with_suffix(".md").read_text()
    assert f"{metric} (target" in markdown
    return report, markdown


def test_autoscaling_benchmark_replays_the_hpa(tmp_path: Path) -> None:
    from bench.autoscaling.run import STEPS, SWEEP_FRACTIONS

    report, _ = _autoscaling_run(
        tmp_path, "autoscaling-cpu", "queueComputeRatio", "--model", "tiny-bert", "--sweep-level", "0.3"
    )
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


def test_autoscaling_benchmark_replays_the_hpa_on_generation(tmp_path: Path) -> None:
    from bench.autoscaling.run import SWEEP_FRACTIONS

    report, markdown = _autoscaling_run(
        tmp_path, "autoscaling-generation-cpu", "generationPressure", "--workload", "generation",
        "--sweep-level", "0.6",
    )  # fmt: skip
    assert "generationPressure (target 1)" in markdown and "TTFT p99 ms" in markdown

    assert report["capacity_rps"] > 0 and report["calibration_clients"] >= 2
    sweep = report["sweep"]
    assert [row["utilisation_offered"] for row in sweep] == list(SWEEP_FRACTIONS)
    for row in sweep:
        assert set(row) >= {"runningSequences", "requestsWaiting", "kvCacheUtilization", "generationPressure"}
        assert row["ttft_p50_ms"] is None or row["ttft_p50_ms"] > 0
        assert 0 <= (row["kvCacheUtilization"] or 0) <= 1
    # Sequences ran while the pod was loaded, and the composite never read below either of its parts.
    assert max(row["runningSequences"] or 0 for row in sweep) > 0
    run_ = report["runs"]["generationPressure"]
    assert run_["target"] == 1.0
    for point in run_["timeline"]:
        assert 1 <= point["replicas"] <= 4
        signals = point["signals"]
        if point["metric"] is not None:
            assert point["metric"] == signals["generationPressure"]
            # Each value is rounded to 4 digits in the report, the part before it is divided: the part's
            # rounding (up to 5e-5 / 0.8) and the composite's (5e-5) add up to more than 1e-4.
            assert point["metric"] >= signals["requestsWaiting"] / 4 - 2e-4
            assert point["metric"] >= signals["kvCacheUtilization"] / 0.8 - 2e-4
    phases = {phase["phase"]: phase for phase in run_["ttft_by_phase"]}
    assert set(phases) == {"light", "heavy", "heavy, 2nd half"}
    assert phases["heavy"]["requests"] > 0 and phases["heavy"]["ttft_p50_ms"] > 0


def test_generation_benchmark_runs_every_contender(tmp_path: Path) -> None:
    from bench.generation.run import render_markdown, run

    report = run(
        [
            "--layers", "1", "--hidden", "64", "--max-tokens", "8", "--min-prompt", "8", "--max-prompt", "32",
            "--concurrency", "1,2", "--warmup-s", "0.5", "--window-s", "2", "--workdir", str(tmp_path),
            "--no-write", "--shared-prefix", "16", "--prefix-answer-tokens", "4-12",
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
    assert all(0 <= level["foreign_cpu_share"] <= 1 for level in report["ours"]["levels"])
    pairs = report["ours"]["shared_prefix"]
    assert [pair["clients"] for pair in pairs] == [1, 2]
    assert all(
        pair[key]["errors"] == 0 and pair[key]["answers"] > 0
        for pair in pairs
        for key in ("shared", "unique")
    )
    # --whole-answers defaults to 1 client: ours again without streaming, every answer in one response.
    (whole,) = report["ours"]["whole_answer_levels"]
    assert whole["clients"] == 1 and whole["errors"] == 0, whole["first_error"]
    assert whole["answers"] > 0 and 0.9 * whole["latency_p50_ms"] <= whole["ttft_p50_ms"]
    assert report["ratios"]["ours whole answers/baseline tokens/s at 1"] > 0
    markdown = render_markdown(report)
    assert "| 2 |" in markdown and "Shared-prefix workload" in markdown and "ours whole answers" in markdown
    assert "Answers of 4-12 tokens, one length per prompt" in markdown
    # The runtime's own time to first token is inside the client's (same answers, arrival to first token).
    for level in [*report["ours"]["levels"], *(pair[k] for pair in pairs for k in ("shared", "unique"))]:
        assert 0 < level["server_ttft_mean_ms"] < level["ttft_mean_all_ms"]
        # Of which the wait before the prompt's prefill and the prefill (the same answers, scraped alike).
        queued, prefill = level["server_queue_mean_ms"], level["server_prefill_mean_ms"]
        assert min(queued, prefill) > 0 and queued + prefill <= level["server_ttft_mean_ms"] * 1.01, level
    assert "as the runtime counted it" in markdown and "of which queued ms" in markdown


def test_generation_revisions_benchmark_serves_both_runtimes_in_turn(tmp_path: Path) -> None:
    from bench.generation.revisions import render_markdown, run

    report = run(
        [
            "--base", "HEAD", "--layers", "1", "--hidden", "64", "--max-tokens", "8", "--min-prompt", "8",
            "--max-prompt", "32", "--concurrency", "1,2", "--rounds", "2", "--warmup-s", "0.5",
            "--window-s", "2", "--answer-tokens", "4-12", "--workdir", str(tmp_path), "--no-write",
        ]
    )  # fmt: skip
    assert [(entry["round"], entry["clients"]) for entry in report["rounds"]] == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
    ]
    assert [entry["order"] for entry in report["rounds"][::2]] == [["current", "base"], ["base", "current"]]
    for entry in report["rounds"]:
        for window in entry["windows"].values():
            assert window["errors"] == 0 and window["answers"] > 0, window["first_error"]
        assert entry["current/base tokens/s"] > 0
    assert [level["clients"] for level in report["summary"]] == [1, 2]
    markdown = render_markdown(report)
    assert "current/base tok/s" in markdown and "answers of 4-12 tokens (one length per prompt)" in markdown
    assert (tmp_path / "base" / "ours-triton.log").exists() and (tmp_path / "ours-triton.log").exists()


def test_generation_profile_compares_the_engine_with_generate(tmp_path: Path) -> None:
    from bench.generation.profile import run

    report = run(
        [
            "--layers", "1", "--hidden", "64", "--max-tokens", "8", "--min-prompt", "8", "--max-prompt", "32",
            "--sizes", "1,2", "--repeats", "1", "--workdir", str(tmp_path), "--no-write",
        ]
    )  # fmt: skip
    assert [level["prompts"] for level in report["levels"]] == [1, 2]
    for level in report["levels"]:
        assert level["engine/generate"] > 0 and 0 < level["engine"]["forward_share"] <= 1
        assert level["first tokens: engine/generate"] > 0
    assert "engine, one at a time/generate" not in report["levels"][0]  # one prompt: nothing to group
    assert report["levels"][1]["first tokens: engine, one at a time/generate"] > 0


def test_profile_times_the_generated_runtime_stage_by_stage(tmp_path: Path) -> None:
    from bench.dataplane.profile import STAGES, main

    report = main(
        ["--models", "tiny-bert", "--batch", "8", "--batches", "3", "--profiled", "1", "--out", str(tmp_path)]
    )
    result = report["models"]["tiny-bert"]
    assert result["forward_passes_per_batch"] >= 1 and result["texts_per_s"] > 0
    assert all(result["stages_ms_per_batch"][stage] > 0 for stage in STAGES)
    assert sum(result["stages_share"].values()) <= 1.0
    assert result["top_operators"] and all(op["calls"] > 0 for op in result["top_operators"])
    assert any(op["name"] == "aten::addmm" for op in result["top_operators"])  # the linear layers ran
    assert "| forward |" in (tmp_path / "dataplane-profile-cpu.md").read_text()


def test_profile_of_the_int8_repository_names_its_layers(tmp_path: Path) -> None:
    from bench.dataplane.profile import main

    arguments = ["--models", "tiny-bert", "--batch", "8", "--batches", "2", "--profiled", "1"]
    report = main([*arguments, "--quantization", "int8", "--out", str(tmp_path)])
    result = report["models"]["tiny-bert"]
    assert report["dtype"] == "float32, int8"
    assert result["int8"]["layers_int8"] > 0 and result["texts_per_s"] > 0
    assert any(op["name"] == "quantized::linear_dynamic" for op in result["top_operators"])
    markdown = (tmp_path / "dataplane-profile-cpu-int8.md").read_text()
    assert f"int8: {result['int8']['layers_int8']} linear layers int8" in markdown


@pytest.mark.slow
def test_gpu_measurement_script_dry_run_publishes(tmp_path: Path) -> None:
    """bench/gpu/measure.sh --dry-run: the GPU script's steps on this CPU (tiny model, tiny budgets), then
    its results published into a scratch README, as a session with a GPU would."""
    import os
    import subprocess

    from bench.dataplane.publish import publish

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "out"
    completed = subprocess.run(
        ["bash", "bench/gpu/measure.sh", "--dry-run"],
        cwd=repo,
        env={**os.environ, "OUT": str(out)},
        capture_output=True,
        text=True,
        # Five steps since issue 25 (the sidecar on MiniLM, bf16 with its accuracy gate, generation).
        timeout=1500,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    report = json.loads((out / "dataplane-cpu-tiny-bert.json").read_text())
    contenders = report["models"]["tiny-bert"]["contenders"]
    assert set(contenders) == {"ours", "baseline-a"}
    for contender in contenders.values():
        assert "error" not in contender, contender.get("error")
        assert [level["concurrency"] for level in contender["levels"]] == [1, 64]
    assert contenders["ours"]["config"]["build_options"]["instances_per_device"] == 1  # the CPU default
    assert "error" not in contenders["ours"]["client_check"]
    sidecar = json.loads((out / "sidecar" / "dataplane-cpu-minilm.json").read_text())
    through_openai = sidecar["models"]["minilm"]["contenders"]["ours-openai"]
    answers = through_openai.get("answers", {})
    assert through_openai["levels"] and answers.get("same_answers"), answers
    bf16 = json.loads((out / "bf16" / "dataplane-cpu-tiny-bert.json").read_text())
    assert all("error" not in c for c in bf16["models"]["tiny-bert"]["contenders"].values())
    assert "in-process" in (out / "generation.log").read_text()
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n")
    (tmp_path / "results").mkdir()
    sections = publish(out, "abc123", tmp_path / "results", readme)
    assert sections == ["dataplane-cpu-tiny-bert", "dataplane-profile-cpu"]
    text = readme.read_text()
    assert "<!-- dataplane-cpu-tiny-bert:begin -->\nCommit measured: `abc123`." in text
    assert "| ours | 64 |" in text and "| forward |" in text


def test_rerank_benchmark_runs_both_contenders(tmp_path: Path) -> None:
    from bench.rerank.run import DIRECT, RERANK, render_markdown, run

    report = run(
        ["--concurrency", "1,2", "--warmup-s", "0.5", "--window-s", "2", "--repeats", "1",
         "--workdir", str(tmp_path), "--no-write"]
    )  # fmt: skip
    for name in (DIRECT, RERANK):
        assert [level["concurrency"] for level in report["levels"][name]] == [1, 2]
        assert all(level["errors"] == 0 and level["throughput_rps"] > 0 for level in report["levels"][name])
    assert report["ratios"]["2"] > 0
    assert "| 2 |" in render_markdown(report)


def test_openai_benchmark_runs_both_workloads_both_ways(tmp_path: Path) -> None:
    from bench.openai.run import DIRECT, OPENAI, render_markdown, run

    report = run(
        [
            "--layers", "1", "--hidden", "64", "--max-tokens", "8", "--min-prompt", "8", "--max-prompt", "32",
            "--concurrency", "1,2", "--warmup-s", "0.5", "--window-s", "1.5", "--repeats", "2",
            "--workdir", str(tmp_path), "--no-write",
        ]
    )  # fmt: skip
    for workload in ("embeddings", "generation"):
        levels = report[workload]["levels"]
        for name in (DIRECT, OPENAI):
            assert [level["concurrency"] for level in levels[name]] == [1, 2]
            for level in levels[name]:
                # Two repeats per level, combined: both windows counted, every request answered.
                assert len(level["runs"]) == 2 and level["window_s"] == pytest.approx(3.0)
                assert level["errors"] == 0 and level["requests"] > 0, (workload, name, level)
                assert 0 <= level["other_cpu_share"] <= 1
        for level in levels[OPENAI] if workload == "generation" else ():
            # Every streamed answer had exactly --max-tokens tokens (the sender raises otherwise).
            assert level["tokens_per_s"] == pytest.approx(level["requests"] * 8 / level["window_s"], rel=0.01)
    assert set(report["ratios"]) == {"embeddings@1", "embeddings@2", "generation@1", "generation@2"}
    assert all(ratio > 0 for ratio in report["ratios"].values())
    markdown = render_markdown(report)
    assert "| embeddings | 2 |" in markdown and "| generation | 1 |" in markdown


@pytest.mark.parametrize("client", ["python", "perf_analyzer"])
def test_paired_generation_benchmark_interleaves_every_contender(tmp_path: Path, client: str) -> None:
    from bench.generation.paired import CONTENDERS, render_markdown, run

    report = run(
        [
            "--layers", "1", "--hidden", "64", "--max-tokens", "8", "--min-prompt", "8", "--max-prompt", "32",
            "--rounds", "2", "--warmup-s", "0.5", "--window-s", "1.5", "--workdir", str(tmp_path),
            "--no-write", "--client", client,
        ]
    )  # fmt: skip
    assert report["client"] == client
    assert [entry["round"] for entry in report["rounds"]] == [1, 2]
    assert report["rounds"][0]["order"] != report["rounds"][1]["order"]
    for entry in report["rounds"]:
        for name in CONTENDERS:
            window = entry["windows"][name]
            assert window["errors"] == 0 and window["answers"] > 0, (name, window["first_error"])
            assert window["tokens_per_s"] > 0
        streamed = entry["windows"]["ours streamed"]
        if client == "python":
            # Served whole answers and the baseline's arrive in one response: first token with the last.
            for name in ("ours whole answers", "baseline"):
                assert entry["windows"][name]["ttft_p50_ms"] == pytest.approx(
                    entry["windows"][name]["latency_p50_ms"], rel=0.1
                )
            assert streamed["ttft_p50_ms"] < streamed["latency_p50_ms"]
        else:  # perf_analyzer's latencies are the whole answers': no time to first token is claimed
            assert streamed["ttft_p50_ms"] is None and streamed["latency_p50_ms"] > 0
    assert all(spread["median"] > 0 for spread in report["summary"].values())
    markdown = render_markdown(report)
    assert "median (min-max)" in markdown and ("perf_analyzer (C++" in markdown) == (
        client == "perf_analyzer"
    )


def test_warmup_failure_counts_failed_loads_and_crashes() -> None:
    """The crash itself is Triton's and comes at random (about one load in three failing at warm-up), so
    only the variant that must not crash is run here; its loads fail as the model says."""
    from bench.packing import warmup_failure

    (result,) = warmup_failure.main(["--where", "in-initialize", "--runs", "1", "--loads", "3"])
    assert result == {
        "where": "in-initialize",
        "loads": 3,
        "crashes": 0,
        "runs": [{"where": "in-initialize", "failed_loads": 3, "crashed": False}],
    }
