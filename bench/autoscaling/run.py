"""Autoscaling-signal benchmark.

One real tritonserver serving the generated repository stands in for every pod of a Deployment: with N
simulated replicas behind a Service, each pod receives 1/N of the offered load, so the real server is
driven at total rate / N. Every interval (15 s, like the HPA's sync period and a typical Prometheus
scrape) the benchmark scrapes /metrics, computes the metric the chart's prometheus-adapter rule defines,
and runs the HPA algorithm; the replica count it writes feeds back into the per-pod load. Load steps:
idle -> light -> heavy -> idle, as fractions of one pod's measured capacity.

Before the feedback runs, a sweep drives the pod at fixed fractions of its capacity and records each
metric there: the map from utilisation to metric that a target has to be chosen on.

Two workloads (`--workload`): `encoder` (the default; MiniLM or a tiny BERT, the Triton queue metrics) and
`generation` (a random-weight Llama on the generation runtime, its continuous-batching gauges and the
operator's composite `generationPressure`, with the time to first token per phase: see generation.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.autoscaling import generation
from bench.autoscaling.hpa import Hpa, HpaBehavior
from bench.autoscaling.report import plot, render_markdown
from bench.autoscaling.signals import GENERATION_SIGNALS, SIGNALS, Signal, level_value
from bench.common.checkpoints import BenchModel, make_tiny_bert_classifier, minilm
from bench.common.loadgen import FirstToken, OpenLoop, TritonGrpcSender, closed_loop, percentile
from bench.common.machine import ForeignCpu, describe_machine, load_average, machine_line
from bench.common.metrics import Scrape, scrape_async
from bench.common.quiet import QuietPolicy, add_quiet_options, quiet_policy, wait_for_quiet
from bench.common.report import RESULTS_DIR, benchmark_parser, update_readme_section, write_json, write_text
from bench.common.sentences import load_texts
from bench.dataplane.servers import TRITON_ARGS
from model_repo.options import DEFAULT_MAX_BATCH_SIZE

MODEL_NAME = "model"
REFERENCE_INTERVAL_S = 15.0  # the HPA's sync period; every other duration scales with the interval
ADAPTER_WINDOW_S = 60.0  # the chart's prometheusAdapter.rules.window default (1m)
SWEEP_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.25)
WORKLOAD_SIGNALS = {"encoder": SIGNALS, "generation": GENERATION_SIGNALS}
# Replayed by default. kvCacheUtilization alone is left to --metrics: the sweep shows where it stands.
DEFAULT_METRICS = {
    "encoder": tuple(SIGNALS),
    "generation": ("runningSequences", "requestsWaiting", "generationPressure"),
}
# Default scrape + HPA interval, s, and seconds per sweep level and of the capacity measurement: generation
# replays three signals in about ten minutes on 2 cores, every duration scaled with its shorter interval.
DEFAULT_TIMES = {"encoder": (REFERENCE_INTERVAL_S, 30.0, 15.0), "generation": (1.5, 8.0, 8.0)}
QUICK_TIMES = {"encoder": (2.0, 6.0, 4.0), "generation": (0.5, 3.0, 3.0)}


@dataclass(frozen=True)
class Step:
    name: str
    load: float  # offered load as a multiple of one pod's capacity
    duration_s: float  # at the reference interval; scaled with the interval


# Heavy lasts longer than the HPA's 300 s scale-down stabilisation plus the operator's one pod a minute
# from the maximum to what the load needs: a metric that over-scales and then reads "idle" on the
# over-provisioned pods shows where its scale-down stops (and any flapping) inside the step.
STEPS = (Step("idle", 0.0, 60), Step("light", 0.3, 180), Step("heavy", 3.0, 900), Step("idle", 0.0, 420))


@dataclass(frozen=True)
class Settings:
    workload: str
    model: str
    device: str
    interval_s: float
    metrics: tuple[str, ...]
    max_replicas: int
    sweep_level_s: float
    calibration_s: float
    max_in_flight: int
    quiet: QuietPolicy
    quick: bool
    out: Path
    update_readme: bool

    @property
    def scale(self) -> float:
        return self.interval_s / REFERENCE_INTERVAL_S

    @property
    def window_s(self) -> float:
        return ADAPTER_WINDOW_S * self.scale


def parse_quantity(text: str) -> float:
    """A Kubernetes quantity as the API's defaults write them (plain numbers or milli-units)."""
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def api_defaults() -> tuple[str, dict[str, float]]:
    """The API's default metric and default targets, read from the API itself so they cannot drift."""
    from modeldeploy.api import DEFAULT_TARGETS, Autoscaling

    metric = str(Autoscaling.model_fields["metric"].default.value)
    return metric, {str(key.value): parse_quantity(value) for key, value in DEFAULT_TARGETS.items()}


def workload_targets(signals: Mapping[str, Signal]) -> dict[str, float]:
    """Each signal's target: the API's default for an API metric, else the signal's own (the composite's
    target for that one signal)."""
    _, targets = api_defaults()
    return {key: targets.get(key, signal.default_target) for key, signal in signals.items()}


def operator_behavior() -> HpaBehavior:
    """The `behavior` the operator writes into every HPA it creates (and hands to KEDA's)."""
    from modeldeploy.manifests.horizontalpodautoscaler import HPA_BEHAVIOR

    return HpaBehavior.from_manifest(HPA_BEHAVIOR)


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = benchmark_parser(
        "python -m bench.autoscaling",
        "Drive a real Triton through load steps and replay the HPA on each autoscaling metric.",
        quick="2 s interval (generation: 0.5 s), every duration scaled down with it",
    )
    parser.add_argument("--workload", choices=tuple(WORKLOAD_SIGNALS), default="encoder")
    parser.add_argument(
        "--model", choices=("minilm", "tiny-bert"), default="minilm", help="the encoder workload's model"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help="scrape + HPA sync interval, s (default 15; generation 1.5)",
    )
    parser.add_argument(
        "--metrics",
        default=None,
        help="comma-separated; encoder: "
        + ", ".join(SIGNALS)
        + "; generation: "
        + ", ".join(GENERATION_SIGNALS)
        + " (default: "
        + ", ".join(DEFAULT_METRICS["generation"])
        + ")",
    )
    parser.add_argument("--max-replicas", type=int, default=10)
    parser.add_argument(
        "--sweep-level", type=float, default=None, help="seconds per sweep level (0: no sweep)"
    )
    parser.add_argument("--calibration", type=float, default=None, help="seconds of the capacity measurement")
    parser.add_argument(
        "--max-in-flight", type=int, default=512, help="open-loop arrivals beyond this are shed"
    )
    add_quiet_options(parser, "sweep level", retries=2)
    args = parser.parse_args(argv)
    signals = WORKLOAD_SIGNALS[args.workload]
    metrics = (
        DEFAULT_METRICS[args.workload]
        if args.metrics is None
        else tuple(name.strip() for name in args.metrics.split(",") if name.strip())
    )
    unknown = [name for name in metrics if name not in signals]
    if unknown or not metrics:
        parser.error(f"--metrics: choose from {', '.join(signals)}")
    quick = bool(args.quick)
    interval, sweep_level_s, calibration_s = (QUICK_TIMES if quick else DEFAULT_TIMES)[args.workload]
    interval = args.interval if args.interval is not None else interval
    if interval <= 0:
        parser.error("--interval must be positive")
    return Settings(
        workload=args.workload,
        model=args.model,
        device=args.device,
        interval_s=interval,
        metrics=metrics,
        max_replicas=args.max_replicas,
        sweep_level_s=args.sweep_level if args.sweep_level is not None else sweep_level_s,
        calibration_s=args.calibration if args.calibration is not None else calibration_s,
        max_in_flight=args.max_in_flight,
        quiet=quiet_policy(args, quick),
        quick=quick,
        out=args.out,
        update_readme=not quick and not args.no_readme and args.out == RESULTS_DIR,
    )


@dataclass(frozen=True)
class Workload:
    """What the load steps drive: one served pod, the texts its requests carry, and its signals."""

    key: str  # "encoder" or "generation"
    server: Any  # model_repo.triton.TritonServer
    texts: Sequence[str]
    signals: Mapping[str, Signal]
    targets: Mapping[str, float]
    calibration_clients: int
    new_sender: Callable[[int], Any]  # seed -> an open-loop sender (awaitable per text, with close())
    is_idle: Callable[[Scrape], bool]
    model_key: str
    description: str

    @property
    def streams(self) -> bool:
        """Generation: each request's time to first token is kept by its sender."""
        return self.key == "generation"


@contextlib.contextmanager
def serve(model: BenchModel, workdir: Path, device: str) -> Iterator[Any]:
    from model_repo.build import build_repository
    from model_repo.options import BuildOptions
    from model_repo.triton import TritonServer

    options = BuildOptions(
        source=f"file://{model.path}", model_name=MODEL_NAME, device="gpu" if device == "cuda" else "cpu"
    )
    built = build_repository(options, workdir / "repository")
    args = [*TRITON_ARGS, f"--model-repository={built.path}"]
    with TritonServer(None, extra_args=args, ready_timeout_s=600, log_path=workdir / "triton.log") as server:
        yield server


@contextlib.contextmanager
def serve_workload(settings: Settings, workdir: Path) -> Iterator[Workload]:
    if settings.workload == "generation":
        with generation.serve_generator(workdir, settings.device) as served:
            # Twice the sequence slots: a full batch is waiting whenever one sequence finishes.
            yield Workload(
                "generation",
                served.server,
                served.prompts,
                GENERATION_SIGNALS,
                workload_targets(GENERATION_SIGNALS),
                2 * served.slots,
                lambda seed: generation.new_sender(served.server, seed),
                generation.is_idle,
                "llama-random",
                f"{served.description}; {served.slots} sequence slots (the runtime's default), "
                f"{served.queued} more may wait",
            )
        return
    model = make_tiny_bert_classifier(workdir / "tiny-bert") if settings.model == "tiny-bert" else minilm()
    print(f"{model.key}: {model.description}", flush=True)
    with serve(model, workdir, settings.device) as server:
        # Twice as many clients as a batch holds, so that a full batch is waiting whenever one finishes
        # (with one batch's worth, batches alternate at about half size: MiniLM on 2 cores read 75
        # requests/s that way, against 117-125 with 64 clients in bench/dataplane).
        yield Workload(
            "encoder",
            server,
            list(load_texts()),
            SIGNALS,
            workload_targets(SIGNALS),
            2 * DEFAULT_MAX_BATCH_SIZE,
            lambda _seed: TritonGrpcSender(server.grpc_url, MODEL_NAME),
            lambda sample: sample.get("nv_inference_pending_request_count") == 0,
            model.key,
            model.description,
        )


async def calibrate(workload: Workload, seconds: float) -> float:
    """One pod's capacity: requests/s with the workload's calibration clients in a closed loop."""
    sender = workload.new_sender(0)
    warmup = min(2.0, seconds / 2)
    window_start = time.monotonic() + warmup  # the event loop's clock is the monotonic one
    try:
        result = await closed_loop(sender, workload.texts, workload.calibration_clients, seconds, warmup)
    finally:
        await sender.close()
    capacity = result.throughput
    if workload.streams:
        # Answers take a large part of the window: count every answer that finished inside it, as the
        # window's throughput, not only those that also began inside it (closed_loop's count).
        requests = sender.take_first_tokens()
        capacity = sum(window_start <= r.finished <= window_start + seconds for r in requests) / seconds
    if result.errors or capacity == 0:
        raise RuntimeError(f"calibration failed: {result.errors} errors, first: {result.first_error}")
    return capacity


async def _wait_idle(workload: Workload, timeout_s: float = 120.0) -> None:
    """Let queued work finish so that one phase does not spill into the next."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if workload.is_idle(await scrape_async(workload.server.metrics_url, MODEL_NAME)):
            return
        await asyncio.sleep(0.5)


def _ttft_fields(requests: Sequence[FirstToken]) -> dict[str, Any]:
    summary = generation.ttft_summary(requests)
    return {key: summary[key] for key in ("ttft_p50_ms", "ttft_p99_ms", "refused_or_failed")}


async def sweep_level(
    workload: Workload, fraction: float, capacity: float, settings: Settings
) -> dict[str, Any]:
    """One pod driven at `fraction` of its capacity (open loop, no HPA): each metric and the latency."""
    await _wait_idle(workload)
    server = workload.server
    sender = workload.new_sender(int(fraction * 1000))
    generator = OpenLoop(sender, workload.texts, settings.max_in_flight, seed=int(fraction * 1000))
    rate = fraction * capacity
    warmup = min(3.0, settings.sweep_level_s / 3)
    history: list[Scrape] = []

    async def sample_pending(until: float) -> None:
        # The gauge is sampled often here: this is the sweep's ground truth, not the adapter's view.
        while time.monotonic() < until:
            history.append(await scrape_async(server.metrics_url, MODEL_NAME))
            await asyncio.sleep(0.25)

    started = time.monotonic()
    window_start = started + warmup
    end = window_start + settings.sweep_level_s

    def offered() -> float:
        return rate

    generator_task = asyncio.create_task(generator.run(offered, end))
    await asyncio.sleep(warmup)
    generator.stats.take()
    if workload.streams:
        sender.take_first_tokens()
    meter = ForeignCpu()
    meter.start()
    await sample_pending(end)
    foreign_share = meter.stop()[1]
    await generator_task
    stats = generator.stats.take()
    await generator.drain()
    await sender.close()
    now = history[-1].time
    span = now - history[0].time + 1e-9
    row: dict[str, Any] = {
        "utilisation_offered": fraction,
        "offered_rps": round(rate, 2),
        "served_rps": round(stats.completed / span, 2),
        "shed": stats.shed,
        "errors": stats.errors,
        "p50_ms": round(percentile(stats.latencies_ms, 50), 2),
        "p99_ms": round(percentile(stats.latencies_ms, 99), 2),
    }
    if workload.streams:
        # Requests sent inside the window (the ones that finished after it included).
        sent = [r for r in sender.take_first_tokens() if window_start <= r.sent < end]
        row.update(_ttft_fields(sent))
    for key, signal in workload.signals.items():
        value = level_value(signal, history)
        row[key] = None if value is None else round(value, 4)
    row["foreign_cpu_share"] = round(foreign_share, 3)
    return row


async def sweep(workload: Workload, capacity: float, settings: Settings) -> list[dict[str, Any]]:
    """Each metric at fixed fractions of one pod's capacity; disturbed levels are measured again."""
    rows = []
    for fraction in SWEEP_FRACTIONS:
        attempts = []
        for _ in range(settings.quiet.retries + 1):
            await asyncio.to_thread(wait_for_quiet, settings.quiet)
            attempts.append(await sweep_level(workload, fraction, capacity, settings))
            if attempts[-1]["foreign_cpu_share"] <= settings.quiet.max_foreign_share:
                break
        row = min(attempts, key=lambda attempt: float(attempt["foreign_cpu_share"]))
        row["attempts"] = len(attempts)
        rows.append(row)
        latency = (
            f"TTFT p50 {row['ttft_p50_ms'] or 0:7.1f} p99 {row['ttft_p99_ms'] or 0:8.1f} ms"
            if workload.streams
            else f"p99 {row['p99_ms']:8.1f} ms"
        )
        values = "  ".join(f"{key} {row[key] or 0:.3g}" for key in workload.signals)
        print(
            f"  sweep {fraction:4.2f}x capacity: served {row['served_rps']:7.1f}/s {latency}  {values}",
            flush=True,
        )
    return rows


def ttft_phases(boundaries: Sequence[tuple[float, float, Step]]) -> list[tuple[str, float, float]]:
    """The phases whose time to first token is reported: every loaded step, and the heavy step's second
    half apart (after the scale-up, what the signal settles on)."""
    phases = [(step.name, begin, end) for begin, end, step in boundaries if step.load > 0]
    phases += [
        (f"{step.name}, 2nd half", (begin + end) / 2, end)
        for begin, end, step in boundaries
        if step.name == "heavy"
    ]
    return phases


async def feedback_run(
    workload: Workload, capacity: float, signal: Signal, target: float, settings: Settings
) -> dict[str, Any]:
    """The load steps with the HPA in the loop, scaling on `signal` with `target`."""
    await _wait_idle(workload)
    await asyncio.to_thread(wait_for_quiet, settings.quiet)
    server = workload.server
    behavior = operator_behavior().scaled(settings.scale)
    hpa = Hpa(target=target, min_replicas=1, max_replicas=settings.max_replicas, behavior=behavior)
    sender = workload.new_sender(7)
    generator = OpenLoop(sender, workload.texts, settings.max_in_flight, seed=7)
    steps = [(step, step.duration_s * settings.scale) for step in STEPS]
    total = sum(duration for _, duration in steps)
    started = time.monotonic()
    boundaries = []
    elapsed = 0.0
    for step, duration in steps:
        boundaries.append((elapsed, elapsed + duration, step))
        elapsed += duration

    def current_step(now: float) -> Step:
        offset = now - started
        return next((step for begin, end, step in boundaries if begin <= offset < end), steps[-1][0])

    def per_pod_rate() -> float:
        return current_step(time.monotonic()).load * capacity / hpa.replicas

    generator_task = asyncio.create_task(generator.run(per_pod_rate, started + total))
    history: list[Scrape] = []
    timeline: list[dict[str, Any]] = []
    requests: list[FirstToken] = []
    tick = started
    meter = ForeignCpu()
    meter.start()
    while True:
        tick += settings.interval_s
        if tick > started + total + 1e-6:
            break
        await asyncio.sleep(max(0.0, tick - time.monotonic()))
        sample = await scrape_async(server.metrics_url, MODEL_NAME)
        history.append(sample)
        foreign_share = meter.stop()[1]
        meter.start()
        history = [s for s in history if s.time > sample.time - settings.window_s - settings.interval_s]
        value = signal.compute(history, sample.time, settings.window_s)
        step = current_step(sample.time - 1e-6)
        replicas_before = hpa.replicas
        decision = hpa.step(sample.time - started, value) if value is not None else None
        stats = generator.stats.take()
        point = {
            "t_s": round(sample.time - started, 2),
            "step": step.name,
            "offered_total_rps": round(step.load * capacity, 2),
            "replicas_before": replicas_before,
            "per_pod_offered_rps": round(step.load * capacity / replicas_before, 2),
            "per_pod_served_rps": round(stats.completed / settings.interval_s, 2),
            "shed": stats.shed,
            "errors": stats.errors,
            "in_flight": stats.in_flight,
            "p50_ms": round(percentile(stats.latencies_ms, 50), 2) if stats.latencies_ms else None,
            "p99_ms": round(percentile(stats.latencies_ms, 99), 2) if stats.latencies_ms else None,
            "metric": None if value is None else round(value, 4),
            "raw_desired": decision.raw_desired if decision else None,
            "replicas": hpa.replicas,
            "foreign_cpu_share": round(foreign_share, 3),
        }
        if workload.streams:
            # The requests that finished during this interval; the other signals as they read meanwhile.
            finished = sender.take_first_tokens()
            requests += finished
            point.update(_ttft_fields(finished))
            point["signals"] = {
                key: None
                if (other := s.compute(history, sample.time, settings.window_s)) is None
                else round(other, 4)
                for key, s in workload.signals.items()
            }
        timeline.append(point)
        print(
            f"  [{signal.key}] t={point['t_s']:6.1f}s {step.name:5} "
            f"replicas {replicas_before:2}->{hpa.replicas:2} "
            f"metric {point['metric']}  per-pod {point['per_pod_offered_rps']:.0f}/s offered "
            f"{point['per_pod_served_rps']:.0f}/s served  shed {point['shed']}",
            flush=True,
        )
    await generator_task
    await generator.drain()
    await sender.close()
    result = {
        "metric": signal.key,
        "adapter_metric": signal.adapter_name,
        "target": target,
        "behavior": behavior.__dict__,
        "steps": [
            {"name": step.name, "load": step.load, "start_s": begin, "end_s": end}
            for begin, end, step in boundaries
        ],
        "timeline": timeline,
        "assessment": assess(timeline, boundaries, capacity),
    }
    if workload.streams:
        requests += sender.take_first_tokens()  # those that finished after the last interval
        result["ttft_by_phase"] = generation.ttft_by_phase(requests, started, ttft_phases(boundaries))
    return result


def assess(
    timeline: Sequence[dict[str, Any]], boundaries: Sequence[tuple[float, float, Step]], capacity: float
) -> dict[str, Any]:
    """What an operator would want to know about one metric's run."""

    def points(index: int) -> list[dict[str, Any]]:
        begin, end, _ = boundaries[index]
        return [p for p in timeline if begin < p["t_s"] <= end + 1e-6]

    light_index = next(i for i, (_, _, step) in enumerate(boundaries) if step.name == "light")
    heavy_index = next(i for i, (_, _, step) in enumerate(boundaries) if step.name == "heavy")
    idle_index = len(boundaries) - 1
    light, heavy, idle = points(light_index), points(heavy_index), points(idle_index)
    heavy_load = boundaries[heavy_index][2].load
    # Enough pods to keep each at or under 80% of its capacity.
    needed = math.ceil(heavy_load / 0.8)
    heavy_start = boundaries[heavy_index][0]
    first_up = next((p["t_s"] - heavy_start for p in heavy if p["replicas"] > p["replicas_before"]), None)
    reached = next((p["t_s"] - heavy_start for p in heavy if p["replicas"] >= needed), None)
    replicas_heavy = [p["replicas"] for p in heavy]
    direction_changes = 0
    last_direction = 0
    for previous, current in itertools.pairwise(replicas_heavy):
        direction = (current > previous) - (current < previous)
        if direction and last_direction and direction != last_direction:
            direction_changes += 1
        direction = direction or last_direction
        last_direction = direction
    idle_start = boundaries[idle_index][0]
    back_to_min = next((p["t_s"] - idle_start for p in idle if p["replicas"] == 1), None)
    tail = heavy[len(heavy) // 2 :]
    return {
        "capacity_rps": round(capacity, 2),
        "light_max_replicas": max((p["replicas"] for p in light), default=None),
        "heavy_needed_replicas_at_80pct": needed,
        "heavy_first_scale_up_after_s": first_up,
        "heavy_reached_needed_after_s": reached,
        "heavy_final_replicas": replicas_heavy[-1] if replicas_heavy else None,
        "heavy_max_replicas": max(replicas_heavy, default=None),
        "heavy_direction_changes": direction_changes,
        "heavy_second_half_shed": sum(p["shed"] for p in tail),
        "heavy_second_half_p99_ms": max((p["p99_ms"] or 0 for p in tail), default=None),
        "idle_back_to_min_after_s": back_to_min,
        "foreign_cpu_share_mean": round(
            sum(p["foreign_cpu_share"] for p in timeline) / max(1, len(timeline)), 3
        ),
        "foreign_cpu_share_max": max((p["foreign_cpu_share"] for p in timeline), default=None),
    }


def recommend(
    sweep_rows: Sequence[dict[str, Any]], keys: Sequence[str], utilisation: float = 0.8
) -> dict[str, float | None]:
    """Each metric's value at `utilisation` of one pod's capacity (linear between sweep points)."""
    recommendations: dict[str, float | None] = {}
    for key in keys:
        points = [(row["utilisation_offered"], row[key]) for row in sweep_rows if row[key] is not None]
        value = None
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            if x0 <= utilisation <= x1:
                value = y0 + (y1 - y0) * (utilisation - x0) / (x1 - x0) if x1 > x0 else y0
                break
        recommendations[key] = None if value is None else round(value, 4)
    return recommendations


def command_line(argv: Sequence[str] | None) -> str:
    arguments = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([".venv/bin/python", "-m", "bench.autoscaling", *arguments])


async def _run_all(workload: Workload, settings: Settings, report: dict[str, Any]) -> None:
    capacity = await calibrate(workload, settings.calibration_s)
    report["capacity_rps"] = round(capacity, 2)
    print(f"  one pod's capacity: {capacity:.1f} requests/s", flush=True)
    if settings.sweep_level_s > 0:
        report["sweep"] = await sweep(workload, capacity, settings)
        report["at_80pct_utilisation"] = recommend(report["sweep"], list(workload.signals))
    for key in settings.metrics:
        report["runs"][key] = await feedback_run(
            workload, capacity, workload.signals[key], workload.targets[key], settings
        )


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    settings = parse_args(argv)
    machine = describe_machine()
    print(f"machine: {machine_line(machine)}", flush=True)
    default_metric, _ = api_defaults()
    report: dict[str, Any] = {
        "benchmark": "autoscaling",
        "workload": settings.workload,
        "command": command_line(argv),
        "quick": settings.quick,
        "device": settings.device,
        "machine": machine,
        "settings": {
            "interval_s": settings.interval_s,
            "time_scale": settings.scale,
            "adapter_window_s": settings.window_s,
            "max_replicas": settings.max_replicas,
            "steps": [
                {"name": s.name, "load_x_capacity": s.load, "duration_s": s.duration_s * settings.scale}
                for s in STEPS
            ],
            "sweep_level_s": settings.sweep_level_s,
            "max_in_flight": settings.max_in_flight,
        },
        "api_default_metric": default_metric,
        "runs": {},
    }
    with (
        tempfile.TemporaryDirectory(prefix="bench-autoscaling-") as temporary,
        serve_workload(settings, Path(temporary)) as workload,
    ):
        report["model"] = {"key": workload.model_key, "description": workload.description}
        report["calibration_clients"] = workload.calibration_clients
        # For generation, requestsWaiting's and kvCacheUtilization's are the composite's own targets.
        report["api_default_targets"] = dict(workload.targets)
        asyncio.run(_run_all(workload, settings, report))
    report["load_average_at_end"] = [round(value, 2) for value in load_average()]
    section = f"autoscaling-{'generation-' if settings.workload == 'generation' else ''}{settings.device}"
    stem = section + ("-quick" if settings.quick else "")
    write_json(settings.out / f"{stem}.json", report)
    markdown = render_markdown(report)
    write_text(settings.out / f"{stem}.md", markdown)
    plot(report, settings.out / f"{stem}.png")
    if settings.update_readme:
        update_readme_section(section, markdown)
    print(f"wrote {settings.out / stem}.json, .md, .png", flush=True)
    print(markdown, flush=True)
    return report
