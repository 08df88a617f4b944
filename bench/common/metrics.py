"""Triton's Prometheus /metrics: scrape, pick one model's series, and turn two scrapes into a breakdown."""

from __future__ import annotations

import asyncio
import math
import re
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The generation runtime's time to first token, from a request's arrival in the model to its first token,
# and its two parts: arrival to the prompt's prefill, and the prefill forward
# (model_repo/runtime/generation_metrics.py). Histograms: the benchmarks read their `_sum` (seconds) and
# `_count`.
GENERATION_TTFT = "modeldeploy_generation_time_to_first_token_seconds"
GENERATION_QUEUE = "modeldeploy_generation_queue_time_seconds"
GENERATION_PREFILL = "modeldeploy_generation_prefill_time_seconds"
GENERATION_HISTOGRAMS = (GENERATION_TTFT, GENERATION_QUEUE, GENERATION_PREFILL)

# Cumulative counters (µs, seconds or counts) and the gauges the benchmarks read, per model (the
# `modeldeploy_generation_` ones are the generation runtime's own).
COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    *(f"{name}_{part}" for name in GENERATION_HISTOGRAMS for part in ("sum", "count")),
)
GAUGES = (
    "nv_inference_pending_request_count",
    "modeldeploy_generation_requests_waiting",
    "modeldeploy_generation_sequences_running",
    "modeldeploy_generation_kv_cache_utilization",
)


@dataclass(frozen=True)
class Scrape:
    """One model's Triton series at one moment (`time` from `time.monotonic()`)."""

    time: float
    values: dict[str, float]

    def get(self, name: str) -> float:
        return self.values.get(name, 0.0)


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str, model: str) -> dict[str, float]:
    """Sum each wanted series over the versions (and failure reasons) of `model`.

    A small parser of the Prometheus text format, not prometheus_client's: that one renames counter
    samples to `<name>_total`, which is not what the adapter rules (and Triton) call them.
    """
    wanted = set(COUNTERS) | set(GAUGES)
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if not match or match.group(1) not in wanted:
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        if labels.get("model") != model:
            continue
        values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(3))
    return values


def fetch_metrics_text(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body: bytes = response.read()
    return body.decode()


def scrape(url: str, model: str) -> Scrape:
    return Scrape(time.monotonic(), parse_metrics(fetch_metrics_text(url), model))


async def scrape_async(url: str, model: str) -> Scrape:
    return await asyncio.to_thread(scrape, url, model)


def _per(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def histogram_mean_ms(before: Scrape, after: Scrape, histogram: str) -> float:
    """The mean (ms) of a seconds histogram's observations between the scrapes (NaN if none)."""
    seconds = after.get(f"{histogram}_sum") - before.get(f"{histogram}_sum")
    return 1000 * _per(seconds, after.get(f"{histogram}_count") - before.get(f"{histogram}_count"))


@dataclass(frozen=True)
class Breakdown:
    """Where a request's time went inside Triton between two scrapes (per successful request)."""

    requests: float
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float
    request_us: float
    average_batch: float

    @classmethod
    def between(cls, before: Scrape, after: Scrape) -> Breakdown:
        return cls.over([(before, after)])

    @classmethod
    def over(cls, windows: Sequence[tuple[Scrape, Scrape]]) -> Breakdown:
        """The breakdown of several measured windows together (counters summed over them)."""

        def delta(name: str) -> float:
            return sum(after.get(name) - before.get(name) for before, after in windows)

        requests = delta("nv_inference_request_success")
        return cls(
            requests=requests,
            queue_us=_per(delta("nv_inference_queue_duration_us"), requests),
            compute_input_us=_per(delta("nv_inference_compute_input_duration_us"), requests),
            compute_infer_us=_per(delta("nv_inference_compute_infer_duration_us"), requests),
            compute_output_us=_per(delta("nv_inference_compute_output_duration_us"), requests),
            request_us=_per(delta("nv_inference_request_duration_us"), requests),
            average_batch=_per(delta("nv_inference_count"), delta("nv_inference_exec_count")),
        )

    def summary(self) -> dict[str, Any]:
        def rounded(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 2)

        return {
            "requests": int(self.requests),
            "queue_us": rounded(self.queue_us),
            "compute_input_us": rounded(self.compute_input_us),
            "compute_infer_us": rounded(self.compute_infer_us),
            "compute_output_us": rounded(self.compute_output_us),
            "request_us": rounded(self.request_us),
            "average_batch": rounded(self.average_batch),
        }
