"""What the generation engine (generation.py) reports about itself: its Prometheus metrics on Triton's
metrics port, and the profile of where its thread's time goes, logged while it has work.

Copied beside model.py with generation.py in every text-generation model.
"""

from __future__ import annotations

import time

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by tests that exercise the pure helpers
    pb_utils = None

# Seconds between the engine's profile lines in the log (where its time went), while it has work.
PROFILE_LOG_S = 30.0
TTFT_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
# vLLM's buckets for the same two measures (vllm:time_per_output_token_seconds,
# vllm:e2e_request_latency_seconds), so dashboards built for it read ours alike.
TIME_PER_OUTPUT_TOKEN_BUCKETS_S = [
    *(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75),
    *(1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0),
]
E2E_BUCKETS_S = [
    *(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0),
    *(120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0),
]


class GenerationMetrics:
    """The runtime's Prometheus metrics on Triton's metrics port (labels: model, version)."""

    def __init__(self, model: str, version: str) -> None:
        labels = {"model": model, "version": version}
        family = pb_utils.MetricFamily
        # Triton invalidates a Metric once its MetricFamily is garbage-collected: keep both.
        self.families = {
            key: family(name=f"modeldeploy_generation_{key}", description=description, kind=kind)
            for key, description, kind in (
                ("requests_waiting", "Generation requests waiting for a sequence slot", family.GAUGE),
                ("sequences_running", "Sequences in the continuous batch (prefill or decode)", family.GAUGE),
                (
                    "kv_cache_utilization",
                    "Positions the running batch holds, as a share of max_concurrent_sequences full contexts",
                    family.GAUGE,
                ),
                ("tokens_total", "Tokens generated", family.COUNTER),
                ("prefix_cache_hits_total", "Requests that reused a cached prompt prefix", family.COUNTER),
                ("prefix_cache_tokens_total", "Prompt tokens taken from the prefix cache", family.COUNTER),
                (
                    "time_to_first_token_seconds",
                    "Seconds from arrival to first generated token",
                    family.HISTOGRAM,
                ),
                (
                    "queue_time_seconds",
                    "Seconds from arrival to the start of the request's prefill (tokenising, waiting for a "
                    "sequence slot, the step running, prompts prefilled before it)",
                    family.HISTOGRAM,
                ),
                (
                    "prefill_time_seconds",
                    "Seconds of the prefill forward that computed the request's first token (shared by the "
                    "prompts prefilled together with it)",
                    family.HISTOGRAM,
                ),
                (
                    "time_per_output_token_seconds",
                    "Per finished request of two tokens or more: seconds from its first token to its last, "
                    "per token after the first",
                    family.HISTOGRAM,
                ),
                (
                    "e2e_request_latency_seconds",
                    "Seconds from a finished request's arrival to its last token",
                    family.HISTOGRAM,
                ),
            )
        }
        self.waiting = self.families["requests_waiting"].Metric(labels=labels)
        self.running = self.families["sequences_running"].Metric(labels=labels)
        self.kv_cache = self.families["kv_cache_utilization"].Metric(labels=labels)
        self.tokens = self.families["tokens_total"].Metric(labels=labels)
        self.ttft, self.queue_time, self.prefill_time = (
            self.families[key].Metric(labels=labels, buckets=TTFT_BUCKETS_S)
            for key in ("time_to_first_token_seconds", "queue_time_seconds", "prefill_time_seconds")
        )
        self.time_per_output_token = self.families["time_per_output_token_seconds"].Metric(
            labels=labels, buckets=TIME_PER_OUTPUT_TOKEN_BUCKETS_S
        )
        self.e2e = self.families["e2e_request_latency_seconds"].Metric(labels=labels, buckets=E2E_BUCKETS_S)
        self.prefix_hits = self.families["prefix_cache_hits_total"].Metric(labels=labels)
        self.prefix_tokens = self.families["prefix_cache_tokens_total"].Metric(labels=labels)


class EngineProfile:
    """Where the engine thread's time goes, by phase; logged every PROFILE_LOG_S while there is work."""

    # sender_thread: the responses' own thread, beside the engine's (its share can overlap the others).
    PHASES = (
        "prefill",
        "forward",
        "choose",
        "respond",
        "join_leave",
        "cancel_checks",
        "metrics",
        "idle",
        "sender_thread",
    )

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.steps = self.rows = 0
        self.prompts = self.groups = 0
        self.queue_s = self.prompt_prefill_s = 0.0
        self.since = 0.0
        self.reset()

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.steps = self.rows = 0
        self.prompts = self.groups = 0  # prompts prefilled, and the forwards that prefilled them
        self.queue_s = self.prompt_prefill_s = 0.0  # summed over prompts: arrival to prefill, prefill
        self.since = time.perf_counter()

    def prefilled(self, queued_s: list[float], prefill_s: float) -> None:
        """One prefill forward: each of its prompts' time from arrival to the forward, and the forward's."""
        self.groups += 1
        self.prompts += len(queued_s)
        self.queue_s += sum(queued_s)
        self.prompt_prefill_s += prefill_s * len(queued_s)

    def line(self) -> str | None:
        """The profile since the last line (and start a new period), or None if the engine was idle."""
        now = time.perf_counter()
        if self.steps == 0 or now - self.since < PROFILE_LOG_S:
            return None
        elapsed = now - self.since
        shares = ", ".join(f"{phase} {100 * value / elapsed:.1f}%" for phase, value in self.seconds.items())
        forward_ms = 1000 * self.seconds["forward"] / self.steps
        text = (
            f"generation engine profile over {elapsed:.0f} s: {shares}; {self.steps} decoding steps, "
            f"{self.rows / self.steps:.1f} rows per step, {forward_ms:.2f} ms forward per step"
        )
        if self.prompts:
            text += (
                f"; {self.prompts} prompts prefilled in {self.groups} forwards, a prompt's mean "
                f"{1000 * self.queue_s / self.prompts:.1f} ms queued and "
                f"{1000 * self.prompt_prefill_s / self.prompts:.1f} ms in its prefill"
            )
        self.reset()
        return text
