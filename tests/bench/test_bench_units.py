"""The benchmarks' own logic, without servers: workload, /metrics parsing, adapter formulas, HPA algorithm."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.autoscaling.hpa import Hpa, HpaBehavior, raw_desired_replicas
from bench.autoscaling.run import api_defaults, parse_quantity
from bench.autoscaling.signals import (
    GENERATION_SIGNALS,
    SIGNALS,
    generation_pressure,
    kv_cache_utilization,
    level_value,
    pending_requests,
    pressure,
    queue_compute_ratio,
    queue_time_us,
    requests_waiting,
    running_sequences,
)
from bench.common.machine import ForeignCpu
from bench.common.metrics import (
    GENERATION_PREFILL,
    GENERATION_QUEUE,
    GENERATION_TTFT,
    Breakdown,
    Scrape,
    histogram_mean_ms,
    parse_metrics,
)
from bench.common.sentences import MAX_WORDS, MIN_WORDS, TEXT_COUNT, compose_texts, load_texts, word_count

REPO = Path(__file__).resolve().parents[2]
ADAPTER_RULES = REPO / "charts" / "modeldeploy" / "templates" / "prometheus-adapter-rules.yaml"


def test_committed_workload_is_what_the_generator_makes() -> None:
    texts = load_texts()
    assert texts == tuple(compose_texts())
    assert len(texts) == TEXT_COUNT == len(set(texts))
    lengths = [word_count(text) for text in texts]
    assert min(lengths) >= MIN_WORDS and max(lengths) <= MAX_WORDS
    # Spread over the range, not bunched: every decile of the range is represented.
    for low in range(MIN_WORDS, MAX_WORDS, 6):
        assert any(low <= length < low + 6 for length in lengths), low


TRITON_METRICS = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="model",version="1"} 120
nv_inference_request_success{model="other",version="1"} 7
nv_inference_count{model="model",version="1"} 120
nv_inference_exec_count{model="model",version="1"} 30
nv_inference_queue_duration_us{model="model",version="1"} 60000
nv_inference_compute_infer_duration_us{model="model",version="1"} 240000
nv_inference_request_failure{model="model",reason="BACKEND",version="1"} 2
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="model",version="1"} 3
nv_inference_pending_request_count{model="model",version="2"} 1
# TYPE modeldeploy_generation_time_to_first_token_seconds histogram
modeldeploy_generation_time_to_first_token_seconds_bucket{le="0.05",model="model",version="1"} 3
modeldeploy_generation_time_to_first_token_seconds_sum{model="model",version="1"} 0.25
modeldeploy_generation_time_to_first_token_seconds_count{model="model",version="1"} 5
modeldeploy_generation_queue_time_seconds_sum{model="model",version="1"} 0.07
modeldeploy_generation_queue_time_seconds_count{model="model",version="1"} 5
"""


def test_metrics_are_parsed_under_triton_names_and_summed_over_versions() -> None:
    values = parse_metrics(TRITON_METRICS, "model")
    assert values["nv_inference_request_success"] == 120
    assert values["nv_inference_pending_request_count"] == 4
    assert "nv_inference_request_failure" not in values  # not a series the benchmarks read
    assert parse_metrics(TRITON_METRICS, "missing") == {}


def test_the_generation_runtimes_mean_time_to_first_token_between_two_scrapes() -> None:
    after = Scrape(1.0, parse_metrics(TRITON_METRICS, "model"))
    before = Scrape(0.0, {f"{GENERATION_TTFT}_sum": 0.05, f"{GENERATION_TTFT}_count": 1})
    assert histogram_mean_ms(before, after, GENERATION_TTFT) == pytest.approx(1000 * 0.2 / 4)
    assert math.isnan(histogram_mean_ms(after, after, GENERATION_TTFT))  # no first token between them
    # Its parts the same way; a histogram the server does not export has no mean.
    assert histogram_mean_ms(before, after, GENERATION_QUEUE) == pytest.approx(1000 * 0.07 / 5)
    assert math.isnan(histogram_mean_ms(before, after, GENERATION_PREFILL))


def test_the_shared_prefix_workloads_answer_lengths_spread_over_their_range() -> None:
    from bench.generation.run import answer_lengths, answer_tokens, parse_args, token_range

    assert token_range("") is None and token_range("16-112") == (16, 112) and token_range("8") == (8, 8)
    for bad in ("0-4", "12-8", "x"):
        with pytest.raises(ValueError):
            token_range(bad)
    lengths = answer_lengths(256, 16, 112)
    assert min(lengths) == 16 and max(lengths) == 112 and sum(lengths) / len(lengths) == 64
    # A fixed order (both workloads and every run get the same lengths), not the sorted one.
    assert lengths == answer_lengths(256, 16, 112) and lengths != sorted(lengths)
    # Per prompt, the same length for the i-th prompt of each workload; none without a spread.
    spread = parse_args(["--prefix-answer-tokens", "16-112"])
    shared, unique = [f"shared {i}" for i in range(256)], [f"unique {i}" for i in range(256)]
    by_prompt = answer_tokens(spread, shared, unique)
    assert (
        by_prompt is not None and [by_prompt[p] for p in shared] == [by_prompt[p] for p in unique] == lengths
    )
    assert answer_tokens(parse_args([]), shared) is None


def test_a_base_revisions_repository_runs_that_revisions_runtime(tmp_path: Path) -> None:
    from bench.generation.revisions import ROOT, RUNTIME, with_runtime_of

    repository = tmp_path / "current"
    (repository / "model" / "1").mkdir(parents=True)
    (repository / "model" / "config.pbtxt").write_text('backend: "python"\n')
    for name in ("model.py", "generation.py"):
        (repository / "model" / "1" / name).write_text("# this checkout's, whatever it holds\n")
    base = with_runtime_of(repository, "HEAD", tmp_path / "base")
    committed = subprocess.run(
        ["git", "ls-tree", "--name-only", f"HEAD:{RUNTIME}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    version_dir = base / "model" / "1"
    assert sorted(path.name for path in version_dir.glob("*.py")) == sorted(
        name for name in committed if name.endswith(".py")
    )
    for name in ("model.py", "generation.py"):
        shown = subprocess.run(
            ["git", "show", f"HEAD:{RUNTIME}/{name}"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        assert (version_dir / name).read_bytes() == shown
    assert (base / "model" / "config.pbtxt").read_text() == 'backend: "python"\n'
    assert (repository / "model" / "1" / "model.py").read_text().startswith("# this checkout's")


def test_breakdown_between_two_scrapes() -> None:
    before = Scrape(0.0, parse_metrics(TRITON_METRICS, "model"))
    after_values = dict(before.values)
    after_values.update(
        {
            "nv_inference_request_success": 220,
            "nv_inference_count": 220,
            "nv_inference_exec_count": 40,
            "nv_inference_queue_duration_us": 160000,
        }
    )
    breakdown = Breakdown.between(before, Scrape(10.0, after_values))
    assert breakdown.requests == 100
    assert breakdown.queue_us == pytest.approx(1000.0)
    assert breakdown.average_batch == pytest.approx(10.0)


def test_breakdown_over_windows_sums_their_counters() -> None:
    def window(start: float, requests: float, executions: float, queue_us: float) -> tuple[Scrape, Scrape]:
        names = ("nv_inference_request_success", "nv_inference_count")
        before = Scrape(
            start, dict.fromkeys((*names, "nv_inference_exec_count", "nv_inference_queue_duration_us"), 0.0)
        )
        after = Scrape(start + 1, {**dict.fromkeys(names, requests), "nv_inference_exec_count": executions})
        after.values["nv_inference_queue_duration_us"] = queue_us
        return before, after

    # 100 requests in batches of 10 waiting 1 ms each, then 300 in batches of 30 waiting 3 ms each.
    combined = Breakdown.over([window(0, 100, 10, 100_000), window(5, 300, 10, 900_000)])
    assert combined.requests == 400
    assert combined.queue_us == pytest.approx(2500.0)  # per request, not the mean of the windows' means
    assert combined.average_batch == pytest.approx(20.0)


def test_raw_sweep_keeps_each_points_best_pass_in_alternating_order() -> None:
    from bench.dataplane.raw import RawPoint, sweep

    calls: list[tuple[int, bool]] = []
    slow_first_pass = {(8, True): 100.0}

    def guard(measure_point: Any, _what: str) -> RawPoint:
        size, grouped = measure_point.args[2], measure_point.args[3]
        calls.append((size, grouped))
        first = calls.count((size, grouped)) == 1
        throughput = slow_first_pass.get((size, grouped), 200.0) if first else 150.0 + size
        return RawPoint(size, grouped, throughput, 1.0)

    points = sweep(object(), [], [1, 8], 0.0, guard, passes=2)  # type: ignore[arg-type]
    assert calls == [(1, False), (8, False), (8, True), (8, True), (8, False), (1, False)]
    assert [(p.batch_size, p.grouped, p.throughput) for p in points] == [
        (1, False, 200.0),  # the first pass was the better one
        (8, False, 200.0),
        (8, True, 158.0),  # a slow first pass does not lower the limit
    ]


def _scrape(time: float, success: float, queue: float, compute: float, pending: float) -> Scrape:
    return Scrape(
        time,
        {
            "nv_inference_request_success": success,
            "nv_inference_queue_duration_us": queue,
            "nv_inference_compute_infer_duration_us": compute,
            "nv_inference_pending_request_count": pending,
        },
    )


def test_adapter_formulas_use_only_samples_inside_the_window() -> None:
    history = [
        _scrape(0, 0, 0, 0, 100),  # outside a 60 s window ending at 75 s
        _scrape(15, 100, 1_000_000, 2_000_000, 2),
        _scrape(30, 200, 2_000_000, 4_000_000, 4),
        _scrape(45, 300, 3_000_000, 6_000_000, 6),
        _scrape(60, 400, 4_000_000, 8_000_000, 8),
        _scrape(75, 500, 5_000_000, 10_000_000, 10),
    ]
    assert queue_time_us(history, 75, 60) == pytest.approx(10_000.0)
    assert queue_compute_ratio(history, 75, 60) == pytest.approx(0.5)
    assert pending_requests(history, 75, 60) == pytest.approx(7.0)
    assert queue_time_us(history[:1], 0, 60) is None  # one sample: no rate, like Prometheus


def test_adapter_formulas_are_zero_when_idle() -> None:
    history = [_scrape(t, 50, 9000, 9000, 0) for t in (0, 15, 30, 45)]
    assert queue_time_us(history, 45, 60) == 0
    assert queue_compute_ratio(history, 45, 60) == 0
    assert pending_requests(history, 45, 60) == 0


def test_formulas_match_the_charts_adapter_rules() -> None:
    """If the chart's rules change, the benchmark's copies of them must change with them."""
    rules = re.sub(r"\s+", " ", ADAPTER_RULES.read_text())
    assert "as: modeldeploy_queue_time_us" in rules
    assert (
        "sum by (<<.GroupBy>>) (increase(nv_inference_queue_duration_us{<<.LabelMatchers>>}[{{ $window }}])) "
        "/ clamp_min(sum by (<<.GroupBy>>) (increase(nv_inference_request_success{<<.LabelMatchers>>}"
        "[{{ $window }}])), 1)"
    ) in rules
    assert "as: modeldeploy_queue_compute_ratio" in rules
    assert (
        "sum by (<<.GroupBy>>) (rate(nv_inference_queue_duration_us{<<.LabelMatchers>>}[{{ $window }}])) "
        "/ clamp_min(sum by (<<.GroupBy>>) (rate(nv_inference_compute_infer_duration_us{<<.LabelMatchers>>}"
        "[{{ $window }}])), 1)"
    ) in rules
    assert "as: modeldeploy_pending_requests" in rules
    assert (
        "sum by (<<.GroupBy>>) (avg_over_time(nv_inference_pending_request_count{<<.LabelMatchers>>}"
        "[{{ $window }}]))"
    ) in rules
    assert "as: modeldeploy_running_sequences" in rules
    assert (
        "sum by (<<.GroupBy>>) (avg_over_time(modeldeploy_generation_sequences_running{<<.LabelMatchers>>}"
        "[{{ $window }}]))"
    ) in rules
    assert GENERATION_SIGNALS["runningSequences"].adapter_name == "modeldeploy_running_sequences"
    assert {signal.adapter_name for signal in SIGNALS.values()} == {
        "modeldeploy_queue_time_us",
        "modeldeploy_queue_compute_ratio",
        "modeldeploy_pending_requests",
    }


def test_default_targets_come_from_the_api() -> None:
    metric, targets = api_defaults()
    assert metric in SIGNALS
    assert set(SIGNALS) <= set(targets)
    assert parse_quantity("500m") == 0.5
    assert parse_quantity("8") == 8


GENERATION_METRICS = """# TYPE modeldeploy_generation_requests_waiting gauge
modeldeploy_generation_requests_waiting{model="model",version="1"} 6
modeldeploy_generation_requests_waiting{model="other",version="1"} 50
# TYPE modeldeploy_generation_sequences_running gauge
modeldeploy_generation_sequences_running{model="model",version="1"} 16
# TYPE modeldeploy_generation_kv_cache_utilization gauge
modeldeploy_generation_kv_cache_utilization{model="model",version="1"} 0.36
# TYPE modeldeploy_generation_tokens_total counter
modeldeploy_generation_tokens_total{model="model",version="1"} 90000
"""


def _generation_scrape(time: float, waiting: float, running: float, kv_cache: float) -> Scrape:
    return Scrape(
        time,
        {
            "modeldeploy_generation_requests_waiting": waiting,
            "modeldeploy_generation_sequences_running": running,
            "modeldeploy_generation_kv_cache_utilization": kv_cache,
        },
    )


def test_generation_signals_from_a_scrape() -> None:
    sample = Scrape(30.0, parse_metrics(GENERATION_METRICS, "model"))
    assert sample.get("modeldeploy_generation_requests_waiting") == 6  # the other model's 50 not added
    assert "modeldeploy_generation_tokens_total" not in sample.values
    assert requests_waiting([sample], 30, 60) == 6
    assert kv_cache_utilization([sample], 30, 60) == pytest.approx(0.36)
    assert running_sequences([sample], 30, 60) == 16
    # max(6 / 4, 0.36 / 0.8): the queue is the further past its target.
    assert generation_pressure([sample], 30, 60) == pytest.approx(1.5)
    assert generation_pressure([], 30, 60) is None  # no sample: KEDA's query is empty (ignoreNullValues)


def test_generation_pressure_is_the_scaled_objects_formula() -> None:
    """The benchmark's composite is what KEDA evaluates: the ScaledObject's formula over the same values."""
    from modeldeploy.manifests.scaledobject import PRESSURE_SIGNALS, pressure_formula

    assert set(PRESSURE_SIGNALS) == {"waiting", "kvcache"}
    for waiting, kv_cache in ((0, 0), (6, 0.36), (1, 0.72), (2, 0.8), (40, 0.95)):
        values = {"waiting": float(waiting), "kvcache": kv_cache}
        # expr-lang's max and arithmetic read the formula as Python does.
        expected = eval(pressure_formula(), {"__builtins__": {}, "max": max}, values)
        assert pressure(values) == pytest.approx(expected)
        sample = _generation_scrape(0, waiting, 3, kv_cache)
        assert generation_pressure([sample], 0, 1) == pytest.approx(expected)
    # Each signal's target and query are the operator's, not restated here.
    assert GENERATION_SIGNALS["requestsWaiting"].default_target == float(PRESSURE_SIGNALS["waiting"][1])
    assert GENERATION_SIGNALS["kvCacheUtilization"].default_target == float(PRESSURE_SIGNALS["kvcache"][1])
    assert GENERATION_SIGNALS["generationPressure"].adapter_name == pressure_formula()


def test_generation_instant_signals_read_the_latest_sample_and_running_sequences_the_window() -> None:
    history = [
        _generation_scrape(0, 40, 16, 0.5),  # outside a 60 s window ending at 75 s
        _generation_scrape(15, 0, 2, 0.1),
        _generation_scrape(45, 4, 10, 0.2),
        _generation_scrape(75, 8, 12, 0.3),
    ]
    assert requests_waiting(history, 75, 60) == 8
    assert generation_pressure(history, 75, 60) == pytest.approx(2.0)
    # avg_over_time of the samples in (15, 75], as the adapter rule
    assert running_sequences(history, 75, 60) == pytest.approx(11.0)
    # Over a sweep level, an instant signal is the mean of what it read at each sample.
    pressure_signal, running = (
        GENERATION_SIGNALS["generationPressure"],
        GENERATION_SIGNALS["runningSequences"],
    )
    assert level_value(pressure_signal, history[1:]) == pytest.approx((0.125 + 1.0 + 2.0) / 3)
    assert level_value(running, history[1:]) == pytest.approx(8.0)
    assert level_value(SIGNALS["pendingRequests"], []) is None


def test_generation_targets_come_from_the_api_and_the_scaled_object() -> None:
    from bench.autoscaling.run import DEFAULT_METRICS, parse_args, workload_targets

    targets = workload_targets(GENERATION_SIGNALS)
    assert targets == {
        "runningSequences": 12.0,
        "requestsWaiting": 4.0,
        "kvCacheUtilization": 0.8,
        "generationPressure": 1.0,
    }
    settings = parse_args(["--workload", "generation"])
    assert settings.metrics == DEFAULT_METRICS["generation"]
    assert settings.interval_s == 1.5 and settings.scale == pytest.approx(0.1)
    with pytest.raises(SystemExit):
        parse_args(["--workload", "generation", "--metrics", "queueTime"])
    assert parse_args([]).metrics == tuple(SIGNALS)  # the encoder workload as before


def test_time_to_first_token_by_the_phase_a_request_was_sent_in() -> None:
    from bench.autoscaling.generation import ttft_by_phase
    from bench.autoscaling.run import STEPS, ttft_phases
    from bench.common.loadgen import FirstToken

    boundaries = []
    begin = 0.0
    for step in STEPS:
        boundaries.append((begin, begin + step.duration_s, step))
        begin += step.duration_s
    phases = ttft_phases(boundaries)
    assert [name for name, _, _ in phases] == ["light", "heavy", "heavy, 2nd half"]
    assert phases[2][1:] == (240 + 450, 240 + 900)
    started = 1000.0
    requests = [
        FirstToken(started + 100, 20.0, 40, started + 100 + 1),  # light
        FirstToken(
            started + 239.9, 900.0, 40, started + 239.9 + 1
        ),  # light, however late its first token came
        FirstToken(started + 250, 300.0, 40, started + 250 + 1),  # heavy, first half
        FirstToken(started + 700, None, 0, started + 700 + 1),  # heavy, second half: refused
        FirstToken(started + 800, 100.0, 40, started + 800 + 1),
        FirstToken(started + 1200, 5.0, 40, started + 1200 + 1),  # idle: no phase
    ]
    light, heavy, settled = ttft_by_phase(requests, started, phases)
    assert (light["requests"], light["refused_or_failed"], light["ttft_p50_ms"]) == (2, 0, 460.0)
    assert (heavy["requests"], heavy["refused_or_failed"], heavy["ttft_p50_ms"]) == (3, 1, 200.0)
    assert (settled["requests"], settled["refused_or_failed"], settled["ttft_p99_ms"]) == (2, 1, 100.0)
    assert ttft_by_phase([], started, phases[:1])[0]["ttft_p50_ms"] is None


def test_the_generators_slots_are_read_from_its_config() -> None:
    from bench.autoscaling.generation import config_parameter

    config = (
        'parameters { key: "max_concurrent_sequences" value { string_value: "16" } }\n'
        'parameters { key: "max_queued_requests" value { string_value: "64" } }\n'
    )
    assert config_parameter(config, "max_concurrent_sequences") == "16"
    assert config_parameter(config, "max_queued_requests") == "64"
    with pytest.raises(ValueError, match="max_tokens_limit"):
        config_parameter(config, "max_tokens_limit")


def test_hpa_formula_and_tolerance() -> None:
    assert raw_desired_replicas(3, 1.05, 1.0, 0.1) == 3  # inside the 10% band: no change
    assert raw_desired_replicas(3, 1.5, 1.0, 0.1) == 5  # ceil(4.5)
    assert raw_desired_replicas(4, 0.2, 1.0, 0.1) == 1
    assert raw_desired_replicas(4, 0.0, 1.0, 0.1) == 0
    with pytest.raises(ValueError):
        raw_desired_replicas(1, 1.0, 0.0, 0.1)


def test_hpa_scale_up_is_rate_limited_by_the_default_policies() -> None:
    hpa = Hpa(target=1.0, max_replicas=50)
    # Wants 20 pods from 1: the default policies allow max(+100%, +4 pods) per 15 s period.
    assert hpa.step(0, 20.0).replicas == 5
    assert hpa.step(5, 4.0).replicas == 5  # still inside the same period: no further growth
    assert hpa.step(15, 4.0).replicas == 10  # next period: +100% of 5
    assert hpa.step(30, 0.5).replicas == 10  # a lower recommendation is held by stabilisation


def test_hpa_scale_down_waits_for_the_stabilisation_window() -> None:
    hpa = Hpa(target=1.0, max_replicas=10)
    hpa.step(0, 4.0)  # -> 4
    assert hpa.replicas == 4
    for t in range(15, 300, 15):
        assert hpa.step(t, 0.0).replicas == 4, t  # the recommendation of 4 at t=0 is still in the window
    assert hpa.step(300, 0.0).replicas == 1  # window passed: down to minReplicas at once (-100% allowed)


def test_hpa_behavior_scales_with_the_run() -> None:
    scaled = HpaBehavior().scaled(0.1)
    assert scaled.scale_down_stabilization_s == pytest.approx(30)
    assert scaled.scale_up_period_s == pytest.approx(1.5)
    assert scaled.scale_down_period_s == pytest.approx(1.5)
    hpa = Hpa(target=1.0, behavior=scaled)
    hpa.step(0, 3.0)
    assert hpa.step(29, 0.0).replicas == 3
    assert hpa.step(31, 0.0).replicas == 1


def test_hpa_replays_the_operators_behavior_one_pod_a_minute_down() -> None:
    from bench.autoscaling.run import operator_behavior
    from modeldeploy.manifests.horizontalpodautoscaler import HPA_BEHAVIOR

    behavior = operator_behavior()
    assert behavior == HpaBehavior.from_manifest(HPA_BEHAVIOR)
    assert (behavior.scale_down_percent, behavior.scale_down_pods, behavior.scale_down_period_s) == (
        None,
        1,
        60,
    )
    hpa = Hpa(target=1.0, max_replicas=10, behavior=behavior)
    assert hpa.step(0, 8.0).replicas == 5  # scale-up keeps Kubernetes' default policies
    assert hpa.step(15, 1.6).replicas == 8  # ceil(5 x 1.6)
    replicas = [hpa.step(t, 0.0).replicas for t in range(30, 600, 15)]
    # Held for the 300 s window after the last recommendation of 8, then one pod per 60 s.
    assert replicas[: replicas.index(7)] == [8] * replicas.index(7)
    assert 300 + 15 <= 30 + 15 * replicas.index(7) <= 300 + 30
    assert replicas[replicas.index(7) :: 4][:4] == [7, 6, 5, 4]


def test_hpa_behavior_from_a_manifest_rejects_what_it_cannot_replay() -> None:
    with pytest.raises(ValueError):
        HpaBehavior.from_manifest(
            {
                "scaleDown": {
                    "selectPolicy": "Min",
                    "policies": [
                        {"type": "Pods", "value": 1, "periodSeconds": 60},
                        {"type": "Percent", "value": 10, "periodSeconds": 60},
                    ],
                }
            }
        )
    assert HpaBehavior.from_manifest({}) == HpaBehavior()


def test_hpa_clamps_to_min_and_max() -> None:
    hpa = Hpa(target=10.0, min_replicas=2, max_replicas=3)
    assert hpa.replicas == 2
    assert hpa.step(0, 1000.0).replicas == 3
    with pytest.raises(ValueError):
        Hpa(target=1.0, min_replicas=0)


# perf_analyzer's output for one concurrency, as 2.60.0 prints it (abridged to the lines that are read).
PERF_ANALYZER_STDOUT = """Request concurrency: 4
  Client:
    Request count: 166
    Throughput: 46.0409 infer/sec
  Server:
    Inference count: 166
    Execution count: 88
    Successful request count: 166
    Avg request latency: 80585 usec (overhead 5 usec + queue 30550 usec + compute input 41 usec + compute \
infer 49719 usec + compute output 269 usec)
"""
PERF_ANALYZER_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
    "Avg latency,request/response,response wait\n"
    "4,46.0409,4,5421,30550,41,49719,269,3,13470,315367,545187,671373,86010,7,85992\n"
)


def test_perf_analyzer_output_is_read_in_its_units() -> None:
    from bench.common.perf_analyzer import parse_output

    parsed = parse_output(PERF_ANALYZER_STDOUT, PERF_ANALYZER_CSV)
    assert parsed["concurrency"] == 4 and parsed["throughput_rps"] == pytest.approx(46.0409)
    assert (parsed["p50_ms"], parsed["p99_ms"], parsed["mean_ms"]) == (13.47, 671.373, 86.01)  # µs -> ms
    assert parsed["server"] == {
        "queue": 30550,
        "compute_input": 41,
        "compute_infer": 49719,
        "compute_output": 269,
        "request": 80585,
    }
    # The client's request count is the first "Request count"; the server's counts give the batch size.
    assert (parsed["requests"], parsed["inference_count"], parsed["execution_count"]) == (166, 166, 88)


@pytest.mark.parametrize(
    ("stdout", "csv_text", "message"),
    [
        (PERF_ANALYZER_STDOUT, PERF_ANALYZER_CSV + PERF_ANALYZER_CSV.splitlines()[1] + "\n", "one CSV row"),
        (PERF_ANALYZER_STDOUT.replace("Execution count", "Executions"), PERF_ANALYZER_CSV, "Execution count"),
        (PERF_ANALYZER_STDOUT, PERF_ANALYZER_CSV.replace("Server Queue", "Queue"), "Server Queue"),
    ],
)
def test_perf_analyzer_output_that_does_not_fit_is_refused(stdout: str, csv_text: str, message: str) -> None:
    from bench.common.perf_analyzer import PerfAnalyzerError, parse_output

    with pytest.raises(PerfAnalyzerError, match=message):
        parse_output(stdout, csv_text)


def test_perf_analyzer_input_data_is_one_string_per_step(tmp_path: Path) -> None:
    import json

    from bench.common.perf_analyzer import write_input_data

    texts = load_texts()[:3]
    data = json.loads(write_input_data(texts, "TEXT", tmp_path / "data.json").read_text())
    assert data == {"data": [{"TEXT": {"content": [text], "shape": [1]}} for text in texts]}
    with pytest.raises(ValueError, match="no texts"):
        write_input_data([], "TEXT", tmp_path / "empty.json")


def test_perf_analyzer_windows_are_fixed_and_warmup_is_separate(tmp_path: Path) -> None:
    from bench.common.perf_analyzer import MIN_WINDOW_MS, WINDOWS, Load, Target, measure_command

    target = Target("127.0.0.1:8001", "model", "TEXT")
    command = measure_command(["pa"], Load(target, tmp_path / "d.json", 16, 6.0, 128), tmp_path / "o.csv")
    options = dict(zip(command[1::2], command[2::2], strict=False))
    assert options["--concurrency-range"] == "16" and options["-i"] == "grpc" and options["-b"] == "1"
    assert options["--measurement-interval"] == str(6000 // WINDOWS)
    assert options["--max-trials"] == str(WINDOWS) and options["--warmup-request-count"] == "128"
    short = measure_command(["pa"], Load(target, tmp_path / "d.json", 1, 0.3, 8), tmp_path / "o.csv")
    assert dict(zip(short[1::2], short[2::2], strict=False))["--measurement-interval"] == str(MIN_WINDOW_MS)


def test_a_child_that_has_exited_still_counts_as_the_benchmarks_own_cpu() -> None:
    """A load generator runs for one level and exits before the level's CPU is read: its time must not be
    counted as another process's (it moved into this process's cutime when it was reaped)."""
    import os
    import subprocess
    import sys

    from bench.common.machine import _descendants, _process_ticks, _tree_ticks

    before_tree, before_live = _tree_ticks(os.getpid()), _process_ticks(_descendants(os.getpid()))
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass",
        ],
        check=True,
    )
    tick = os.sysconf("SC_CLK_TCK")
    assert _process_ticks(_descendants(os.getpid())) - before_live < 0.1 * tick  # gone from the live tree
    assert _tree_ticks(os.getpid()) - before_tree >= 0.25 * tick


def test_the_cpu_meter_splits_the_benchmarks_own_processes_by_kind() -> None:
    """A real busy child process: its CPU is reported under its command name, apart from this process's,
    and not as other processes' CPU (it is the benchmark's own)."""
    meter = ForeignCpu()
    meter.start()
    busy = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", busy])
    try:
        time.sleep(1.5)
        meter.stop()
    finally:
        child.kill()
        child.wait()
    name = Path(sys.executable).name  # the program's name (bench.common.machine.process_role)
    assert meter.cores_by_role[name] > 0.2, meter.cores_by_role  # one busy thread: up to a core
    assert meter.cores_by_role["this benchmark's process"] < meter.cores_by_role[name]


def test_generation_throughput_counts_the_tokens_that_arrive_inside_the_window() -> None:
    from bench.generation.run import Completed, tokens_inside

    streamed = Completed(0.5, 1.0, 3.0, 9, ((1.0, 1), (2.0, 5), (3.0, 9)))
    assert tokens_inside(streamed, 0.0, 10.0) == 9
    assert tokens_inside(streamed, 1.5, 2.5) == 4  # only the response at 2.0, four tokens
    assert tokens_inside(streamed, 2.5, 10.0) == 4  # an answer finishing after the window opened
    assert tokens_inside(streamed, 0.0, 1.5) == 1  # an answer still running when it closed
    # Not streamed (the baseline): every token arrives with the answer.
    whole = Completed(0.5, 2.0, 2.0, 10)
    assert (tokens_inside(whole, 1.0, 2.0), tokens_inside(whole, 2.1, 3.0)) == (10, 0)


def test_charts_are_saved_in_a_palette_a_third_of_full_colour(tmp_path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from bench.common.report import save_figure

    figure, axes = plt.subplots(figsize=(6, 4))
    for slope in range(1, 6):
        axes.plot(range(10), [slope * x for x in range(10)], marker="o", label=f"line {slope}")
    axes.legend()
    full = io.BytesIO()
    figure.savefig(full, format="png", dpi=110, bbox_inches="tight")
    save_figure(figure, tmp_path / "chart.png")
    plt.close(figure)
    saved = Image.open(tmp_path / "chart.png")
    original = Image.open(io.BytesIO(full.getvalue())).convert("RGB")
    assert saved.mode == "P" and saved.size == original.size
    # The same picture: on average within a tenth of a level of full colour, 999 values in 1,000 within
    # 8 (only a few antialiased edge pixels move further).
    difference = sorted(
        abs(a - b) for a, b in zip(saved.convert("RGB").tobytes(), original.tobytes(), strict=True)
    )
    assert sum(difference) / len(difference) < 0.1 and difference[len(difference) * 999 // 1000] <= 8
    assert (tmp_path / "chart.png").stat().st_size < len(full.getvalue()) / 2


def test_closed_loop_counts_answers_whose_text_came_only_with_their_last_token() -> None:
    from bench.generation.run import Completed, closed_loop

    def request(_client: Any, prompt: str) -> Completed:
        time.sleep(0.01)
        now = time.perf_counter()
        # The final flag is read after the last response's tokens, so an answer finishes a little later.
        if prompt == "held":  # every token in the last response: nothing could be shown before it
            return Completed(now - 0.01, now - 0.001, now, 4, ((now - 0.001, 4),))
        return Completed(now - 0.01, now - 0.005, now, 4, ((now - 0.005, 1), (now - 0.001, 4)))

    level = closed_loop(request, lambda: None, lambda _client: None, ["held", "streamed"], 1, 0.0, 0.3)
    assert level["all_answers"] >= 10 and level["errors"] == 0
    assert level["text_at_end_answers"] == (level["all_answers"] + 1) // 2  # every other prompt
    assert level["ttft_mean_all_ms"] > 0


def test_paired_rounds_rotate_the_order_and_take_each_ratio_within_its_round() -> None:
    from bench.generation.paired import (
        BASELINE,
        CONTENDERS,
        IN_PROCESS,
        STREAMED,
        WHOLE,
        round_order,
        round_ratios,
        summarise,
    )

    orders = [round_order(index) for index in range(len(CONTENDERS) + 1)]
    assert all(sorted(order) == sorted(CONTENDERS) for order in orders)
    assert [order[0] for order in orders[: len(CONTENDERS)]] == list(CONTENDERS)  # each goes first once
    assert orders[len(CONTENDERS)] == orders[0]

    def round_of(streamed: float, whole: float, baseline: float, in_process: float) -> dict[str, Any]:
        served = {STREAMED: streamed, WHOLE: whole, BASELINE: baseline, IN_PROCESS: in_process}
        return {"ratios": round_ratios({name: {"tokens_per_s": value} for name, value in served.items()})}

    # A machine that runs every contender 20% slower in round 2 leaves each ratio where it was.
    rounds = [round_of(90.0, 110.0, 100.0, 120.0), round_of(72.0, 88.0, 80.0, 96.0), round_of(99, 99, 100, 0)]
    assert rounds[0]["ratios"][f"{STREAMED}/{BASELINE}"] == pytest.approx(0.9)
    assert rounds[1]["ratios"][f"{STREAMED}/{BASELINE}"] == pytest.approx(0.9)
    assert rounds[2]["ratios"][f"{STREAMED}/{IN_PROCESS}"] is None  # nothing served in-process
    summary = summarise(rounds)
    assert summary[f"{STREAMED}/{BASELINE}"]["median"] == pytest.approx(0.9)
    assert summary[f"{STREAMED}/{BASELINE}"]["max"] == pytest.approx(0.99)
    assert summary[f"{WHOLE}/{IN_PROCESS}"] == {
        "median": pytest.approx(110 / 120),
        "min": pytest.approx(110 / 120),
        "max": pytest.approx(110 / 120),
    }
