"""The three autoscaling metrics, computed from scrapes exactly as the chart's prometheus-adapter rules do
(charts/modeldeploy/templates/prometheus-adapter-rules.yaml), for one pod:

- modeldeploy_queue_time_us = increase(queue_duration_us[W]) / clamp_min(increase(request_success[W]), 1)
- modeldeploy_queue_compute_ratio =
  rate(queue_duration_us[W]) / clamp_min(rate(compute_infer_duration_us[W]), 1)
- modeldeploy_pending_requests = avg_over_time(pending_request_count[W])

A range `[W]` holds the samples scraped in (now - W, now]. Prometheus extrapolates `increase` and `rate`
from the first and last sample in the range towards the range's edges; both halves of each quotient are
extrapolated by the same factor, so the quotient equals the plain one between those two samples, which
is what is computed here. With fewer than two samples in range, Prometheus returns no value; the HPA
then skips the pod, which is modelled as None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.common.metrics import Scrape

QUEUE = "nv_inference_queue_duration_us"
COMPUTE = "nv_inference_compute_infer_duration_us"
SUCCESS = "nv_inference_request_success"
PENDING = "nv_inference_pending_request_count"


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


def pending_requests(history: Sequence[Scrape], now: float, window_s: float) -> float | None:
    samples = in_window(history, now, window_s)
    if not samples:
        return None
    return sum(sample.get(PENDING) for sample in samples) / len(samples)


@dataclass(frozen=True)
class Signal:
    key: str  # the API's spec.autoscaling.metric
    adapter_name: str  # the custom metric prometheus-adapter serves
    default_target: float  # the API's default target (operator/modeldeploy/api.py DEFAULT_TARGETS)
    unit: str
    compute: Callable[[Sequence[Scrape], float, float], float | None]


SIGNALS: dict[str, Signal] = {
    "queueTime": Signal("queueTime", "modeldeploy_queue_time_us", 50000.0, "µs", queue_time_us),
    "queueComputeRatio": Signal(
        "queueComputeRatio", "modeldeploy_queue_compute_ratio", 1.0, "ratio", queue_compute_ratio
    ),
    "pendingRequests": Signal(
        "pendingRequests", "modeldeploy_pending_requests", 8.0, "requests", pending_requests
    ),
}
