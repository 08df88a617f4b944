"""The autoscaling metrics, computed from scrapes of one pod exactly as the operator's autoscalers read them.

Encoders, as the chart's prometheus-adapter rules define them
(charts/modeldeploy/templates/prometheus-adapter-rules.yaml):

- modeldeploy_queue_time_us = increase(queue_duration_us[W]) / clamp_min(increase(request_success[W]), 1)
- modeldeploy_queue_compute_ratio =
  rate(queue_duration_us[W]) / clamp_min(rate(compute_infer_duration_us[W]), 1)
- modeldeploy_pending_requests = avg_over_time(pending_request_count[W])

A range `[W]` holds the samples scraped in (now - W, now]. Prometheus extrapolates `increase` and `rate`
from the first and last sample in the range towards the range's edges; both halves of each quotient are
extrapolated by the same factor, so the quotient equals the plain one between those two samples, which
is what is computed here. With fewer than two samples in range, Prometheus returns no value; the HPA
then skips the pod, which is modelled as None.

Text generation (the runtime's `modeldeploy_generation_*` gauges, model_repo/runtime/generation_metrics.py):

- runningSequences, as its adapter rule (engine hpa, the default):
  modeldeploy_running_sequences = avg_over_time(sequences_running[W]);
- requestsWaiting and kvCacheUtilization, as the KEDA ScaledObject of `generationPressure` queries them
  (operator/modeldeploy/manifests/scaledobject.py): an instant query of the gauge, i.e. its latest sample;
- generationPressure: that ScaledObject's scalingModifiers formula, max(waiting / 4, kvcache / 0.8),
  over those two, with its signals and their targets imported from the operator.

The last two alone are not API metrics: each is what the composite would be if it had only that signal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bench.common.metrics import Scrape
from modeldeploy.manifests.scaledobject import PRESSURE_SIGNALS, pressure_formula

QUEUE = "nv_inference_queue_duration_us"
COMPUTE = "nv_inference_compute_infer_duration_us"
SUCCESS = "nv_inference_request_success"
PENDING = "nv_inference_pending_request_count"
RUNNING = "modeldeploy_generation_sequences_running"
WAITING, KV_CACHE = (PRESSURE_SIGNALS[name][0] for name in ("waiting", "kvcache"))


def in_window(history: Sequence[Scrape], now: float, window_s: float) -> list[Scrape]:
    return [sample for sample in history if now - window_s < sample.time <= now]


def _delta(samples: Sequence[Scrape], name: str) -> float:
    # Counters only grow; a drop would be a server restart, which Prometheus treats as a reset.
    change = samples[-1].get(name) - samples[0].get(name)
    return change if change >= 0 else samples[-1].get(name)


def queue_time_us(history: Sequence[Scrape], now: float, window_s: float) -> float | None:
    samples = in_window(history, now, window_s)
    if len(samples) < 2:
        return None
    return _delta(samples, QUEUE) / max(_delta(samples, SUCCESS), 1.0)


def queue_compute_ratio(history: Sequence[Scrape], now: float, window_s: float) -> float | None:
    samples = in_window(history, now, window_s)
    if len(samples) < 2:
        return None
    elapsed = samples[-1].time - samples[0].time
    queue_rate = _delta(samples, QUEUE) / elapsed
    compute_rate = _delta(samples, COMPUTE) / elapsed
    return queue_rate / max(compute_rate, 1.0)


def _average_over_window(history: Sequence[Scrape], now: float, window_s: float, name: str) -> float | None:
    samples = in_window(history, now, window_s)
    if not samples:
        return None
    return sum(sample.get(name) for sample in samples) / len(samples)


def pending_requests(history: Sequence[Scrape], now: float, window_s: float) -> float | None:
    return _average_over_window(history, now, window_s, PENDING)


def running_sequences(history: Sequence[Scrape], now: float, window_s: float) -> float | None:
    return _average_over_window(history, now, window_s, RUNNING)


def _latest(history: Sequence[Scrape], now: float, window_s: float) -> Scrape | None:
    """The sample an instant query at `now` reads (Prometheus looks back for the newest one)."""
    samples = in_window(history, now, window_s)
    return samples[-1] if samples else None


def requests_waiting(history: Sequence[Scrape], now: float, window_s: float) -> float | None:
    sample = _latest(history, now, window_s)
    return None if sample is None else sample.get(WAITING)


def kv_cache_utilization(history: Sequence[Scrape], now: float, window_s: float) -> float | None:
    sample = _latest(history, now, window_s)
    return None if sample is None else sample.get(KV_CACHE)


def pressure(values: Mapping[str, float]) -> float:
    """The ScaledObject's formula over its named triggers' values: each signal over its own target, the
    largest of them (scaledobject.pressure_formula writes the same as an expression for KEDA)."""
    return max(values[name] / float(target) for name, (_metric, target) in PRESSURE_SIGNALS.items())


def generation_pressure(history: Sequence[Scrape], now: float, window_s: float) -> float | None:
    sample = _latest(history, now, window_s)
    if sample is None:
        return None
    return pressure({name: sample.get(metric) for name, (metric, _target) in PRESSURE_SIGNALS.items()})


@dataclass(frozen=True)
class Signal:
    key: str  # the API's spec.autoscaling.metric (requestsWaiting, kvCacheUtilization: see above)
    adapter_name: str  # the custom metric prometheus-adapter serves, or what KEDA's trigger queries
    default_target: float  # the API's default target (operator/modeldeploy/api DEFAULT_TARGETS)
    unit: str
    compute: Callable[[Sequence[Scrape], float, float], float | None]
    instant: bool = False  # read from the latest sample (a KEDA instant query), not over a window


def level_value(signal: Signal, history: Sequence[Scrape]) -> float | None:
    """A signal over a whole sweep level: its window is the level, and an instant query's values at each
    sample are averaged."""
    if not history:
        return None
    if signal.instant:
        values = [
            value for sample in history if (value := signal.compute([sample], sample.time, 1.0)) is not None
        ]
        return sum(values) / len(values) if values else None
    now = history[-1].time
    return signal.compute(history, now, now - history[0].time + 1)


SIGNALS: dict[str, Signal] = {
    "queueTime": Signal("queueTime", "modeldeploy_queue_time_us", 50000.0, "µs", queue_time_us),
    "queueComputeRatio": Signal(
        "queueComputeRatio", "modeldeploy_queue_compute_ratio", 1.0, "ratio", queue_compute_ratio
    ),
    "pendingRequests": Signal(
        "pendingRequests", "modeldeploy_pending_requests", 8.0, "requests", pending_requests
    ),
}


def _pressure_target(name: str) -> float:
    return float(PRESSURE_SIGNALS[name][1])


GENERATION_SIGNALS: dict[str, Signal] = {
    "runningSequences": Signal(
        "runningSequences", "modeldeploy_running_sequences", 12.0, "sequences", running_sequences
    ),
    "requestsWaiting": Signal(
        "requestsWaiting", WAITING, _pressure_target("waiting"), "requests", requests_waiting, instant=True
    ),
    "kvCacheUtilization": Signal(
        "kvCacheUtilization",
        KV_CACHE,
        _pressure_target("kvcache"),
        "share",
        kv_cache_utilization,
        instant=True,
    ),
    "generationPressure": Signal(
        "generationPressure",
        pressure_formula(),
        1.0,
        "x target",
        generation_pressure,
        instant=True,
    ),
}
