"""bench/generation/paired: the contenders at one client, their windows interleaved round by round.

`python -m bench.generation` measures ours at every level, then the baseline, then in-process: the same
level of two contenders runs minutes apart, and a shared machine's speed drifts by several percent over
minutes (sessions 14-15 measured ours against the baseline at one client at 0.78-1.01 with the same
runtime). Here every contender stays up and they take turns: each round gives one window to each of

- ours, streamed (as `bench.generation`'s ours);
- ours, whole answers (`stream` false: one response per answer, as the baseline answers);
- the per-request baseline (Triton's tutorial-style `pipeline` model);
- in-process `generate`, one prompt after another over the same prompts in the same order (the
  one-stream limit issue 24 names: no server, no client).

The order rotates from round to round. Each ratio is taken within its round, seconds apart, and the report
gives every round's ratios and their median. The idle contenders' servers wait on their queues meanwhile.

`--client perf_analyzer` drives the three served contenders with Triton's C++ load generator instead of
this process's Python gRPC client (`--streaming` for ours), so that a streamed answer's 64 responses cost
the measuring client next to nothing on a machine whose cores it shares with the servers. Every answer is
exactly `--max-tokens` tokens (no EOS), so tokens/s is its requests/s times that.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import perf_analyzer
from bench.common.machine import machine_line
from bench.common.report import fmt, markdown_table, spread, write_results
from bench.generation.run import (
    Completed,
    Settings,
    add_measurement_arguments,
    add_model_arguments,
    add_round_arguments,
    baseline_loop,
    build_ours,
    closed_loop,
    generation_fields,
    guarded_level,
    make_checkpoint,
    make_prompts,
    ours_level,
    parse_round_arguments,
    report_head,
    serve,
    serve_ours,
    write_baseline,
)

PYTHON_CLIENT, PERF_ANALYZER = "python", "perf_analyzer"
STREAMED, WHOLE, BASELINE, IN_PROCESS = "ours streamed", "ours whole answers", "baseline", "in-process"
CONTENDERS = (STREAMED, WHOLE, BASELINE, IN_PROCESS)
# perf_analyzer's unmeasured requests before its windows (about a second of answers at one client).
WARMUP_REQUESTS = 4
# Each ratio: (numerator, denominator), both measured in the same round.
RATIOS = (
    (STREAMED, BASELINE),
    (WHOLE, BASELINE),
    (STREAMED, IN_PROCESS),
    (WHOLE, IN_PROCESS),
    (BASELINE, IN_PROCESS),
)


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, int, int, str]:
    parser = argparse.ArgumentParser(prog="python -m bench.generation.paired", description=__doc__)
    add_model_arguments(parser)
    parser.add_argument(
        "--sequences",
        type=int,
        default=16,
        help="ours' maxConcurrentSequences (default: as bench.generation's 1,4,16 run builds it)",
    )
    parser.add_argument(
        "--client",
        choices=(PYTHON_CLIENT, PERF_ANALYZER),
        default=PYTHON_CLIENT,
        help="what drives the served contenders: this process's gRPC client (as bench.generation) or "
        "perf_analyzer",
    )
    add_measurement_arguments(
        parser,
        concurrency=None,  # one client
        warmup_s=3.0,
        window_s=15.0,
        workdir="/tmp/modeldeploy-bench-generation-paired",
        name="generation-paired-cpu",
    )
    add_round_arguments(parser, rounds=5)
    args = parse_round_arguments(parser, argv)
    args.concurrency = "1"
    return Settings(**generation_fields(args)), args.rounds, args.sequences, args.client


def in_process_request(checkpoint: Path, settings: Settings) -> Callable[[Any, str], Completed]:
    """A closed-loop request answered by `generate` in this process: its first token arrives with its
    whole answer, as the baseline's does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model: Any = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    model.eval()
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=settings.max_tokens, do_sample=False, pad_token_id=tokenizer.bos_token_id
    )

    def request(_client: Any, prompt: str) -> Completed:
        started = time.perf_counter()
        encoded = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**encoded, generation_config=config)
        finished = time.perf_counter()
        return Completed(started, finished, finished, int(output.shape[1] - encoded["input_ids"].shape[1]))

    return request


def round_order(round_index: int) -> list[str]:
    """The contenders' order in one round: rotated by one each round, so none always goes first."""
    shift = round_index % len(CONTENDERS)
    return [*CONTENDERS[shift:], *CONTENDERS[:shift]]


def round_ratios(windows: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Tokens/s ratios of one round's windows (None where the denominator served nothing)."""
    ratios: dict[str, float | None] = {}
    for numerator, denominator in RATIOS:
        below = windows[denominator]["tokens_per_s"]
        ratios[f"{numerator}/{denominator}"] = windows[numerator]["tokens_per_s"] / below if below else None
    return ratios


def summarise(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per ratio the median over the rounds, with the lowest and highest."""
    summary: dict[str, Any] = {}
    for numerator, denominator in RATIOS:
        key = f"{numerator}/{denominator}"
        values = [r["ratios"][key] for r in rounds if r["ratios"][key] is not None]
        summary[key] = spread(values) if values else None
    return summary


def perf_analyzer_window(
    target: perf_analyzer.Target, data_file: Path, streaming: bool, settings: Settings
) -> Callable[[], dict[str, Any]]:
    """One window of a served contender driven by perf_analyzer at one client, in the closed loop's
    terms (tokens/s from its requests/s: every answer is exactly max_tokens tokens)."""
    prefix = perf_analyzer.command_prefix()
    load = perf_analyzer.Load(target, data_file, 1, settings.window_s, WARMUP_REQUESTS, streaming)

    def window() -> dict[str, Any]:
        (run,) = perf_analyzer.measure(prefix, load, settings.workdir / "perf_analyzer")
        return {
            "clients": 1,
            "answers": run.requests,
            "errors": 0,  # perf_analyzer exits non-zero on a failed request: measure raises
            "first_error": None,
            "tokens_per_s": run.throughput_rps * settings.max_tokens,
            "latency_p50_ms": run.p50_ms,
            "ttft_p50_ms": None,  # perf_analyzer's latencies are the whole answer's
            "client_cpu_s": run.client_cpu_s,
            "client_wall_s": run.client_wall_s,
        }

    return window


def served_windows(
    ours: Any, baseline: Any, settings: Settings, client: str, prompts: Sequence[str]
) -> dict[str, Callable[[], dict[str, Any]]]:
    """The served contenders' windows, driven by `client`."""
    if client == PYTHON_CLIENT:
        return {
            STREAMED: partial(ours_level, ours, settings, 1, prompts, True),
            WHOLE: partial(ours_level, ours, settings, 1, prompts, False),
            BASELINE: baseline_loop(baseline, settings, prompts, 1),
        }
    files = settings.workdir / "perf_analyzer"
    files.mkdir(parents=True, exist_ok=True)
    ours_target = perf_analyzer.Target(ours.grpc_url, "model", "text_input")
    windows = {}
    for name, streamed in ((STREAMED, True), (WHOLE, False)):
        rows = [
            {
                "text_input": {"content": [prompt], "shape": [1]},
                "stream": {"content": [streamed], "shape": [1]},
                "max_tokens": {"content": [settings.max_tokens], "shape": [1]},
                "temperature": {"content": [0.0], "shape": [1]},
            }
            for prompt in prompts
        ]
        data_file = files / f"ours-{'streamed' if streamed else 'whole'}.json"
        data_file.write_text(json.dumps({"data": rows}))
        # Ours is a decoupled model: perf_analyzer reaches it over a stream either way.
        windows[name] = perf_analyzer_window(ours_target, data_file, True, settings)
    baseline_data = perf_analyzer.write_input_data(prompts, "prompt", files / "baseline.json")
    windows[BASELINE] = perf_analyzer_window(
        perf_analyzer.Target(baseline.grpc_url, "baseline", "prompt"), baseline_data, False, settings
    )
    return windows


def measure(
    checkpoint: Path, settings: Settings, rounds: int, sequences: int, client: str, prompts: Sequence[str]
) -> list[dict[str, Any]]:
    baseline_repository, _config = write_baseline(checkpoint, settings)
    ours_repository = build_ours(checkpoint, settings, sequences)
    generate = in_process_request(checkpoint, settings)
    measured: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        ours = stack.enter_context(serve_ours(ours_repository, settings))
        baseline = stack.enter_context(serve(baseline_repository, settings.workdir / "baseline-triton.log"))
        windows = served_windows(ours, baseline, settings, client, prompts)
        windows[IN_PROCESS] = partial(
            closed_loop,
            generate,
            lambda: None,
            lambda _client: None,
            prompts,
            1,
            settings.warmup_s,
            settings.window_s,
        )
        for index in range(rounds):
            order = round_order(index)
            results = {
                name: guarded_level(settings, windows[name], f"{name}, round {index + 1}") for name in order
            }
            entry = {"round": index + 1, "order": order, "windows": results, "ratios": round_ratios(results)}
            print(f"round {index + 1}: {json.dumps(entry['ratios'])}", flush=True)
            measured.append(entry)
    return measured


def render_markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"Model: random-weight Llama, {settings['layers']} layers, hidden {settings['hidden']}, GQA; prompts "
        f"{settings['min_prompt']}-{settings['max_prompt']} tokens, {settings['max_tokens']}-token answers "
        f"(no EOS), greedy. One client, closed loop; per round one window of each contender "
        f"({settings['warmup_s']:g} s warm-up + {settings['window_s']:g} s), the order rotated each round. "
        f"Ours built with maxConcurrentSequences {report['sequences']}. "
        + (
            "The served contenders driven by perf_analyzer (C++; ours over a gRPC stream): tokens/s is its "
            "answers/s times the answer length."
            if report["client"] == PERF_ANALYZER
            else "The served contenders driven by this process's Python gRPC client, as in bench.generation; "
            "tokens/s counts the tokens that reached the client inside the window."
        ),
        "",
    ]
    headers = ["round", *(f"{name} tok/s" for name in CONTENDERS)]
    headers += [f"{numerator} / {denominator}" for numerator, denominator in RATIOS]
    headers += ["other processes' CPU, most in a window"]
    rows = []
    for entry in report["rounds"]:
        windows = entry["windows"]
        rows.append(
            [
                str(entry["round"]),
                *(fmt(windows[name]["tokens_per_s"]) for name in CONTENDERS),
                *(
                    "-" if value is None else f"{value:.2f}x"
                    for value in (entry["ratios"][f"{n}/{d}"] for n, d in RATIOS)
                ),
                f"{max(window['foreign_cpu_share'] for window in windows.values()):.0%}",
            ]
        )
    median_row = ["median (min-max)", *("" for _ in CONTENDERS)]
    for numerator, denominator in RATIOS:
        over_rounds = report["summary"][f"{numerator}/{denominator}"]
        median_row.append(
            "-"
            if over_rounds is None
            else f"**{over_rounds['median']:.2f}x** ({over_rounds['min']:.2f}-{over_rounds['max']:.2f})"
        )
    median_row.append("")
    rows.append(median_row)
    lines.append(markdown_table(headers, rows))
    for key, what in (("ttft_p50_ms", "Time to first token"), ("latency_p50_ms", "Answer latency")):
        medians = [
            f"{name} {statistics.median(e['windows'][name][key] for e in report['rounds']):,.1f} ms"
            for name in (STREAMED, WHOLE, BASELINE)
            if all(e["windows"][name].get(key) is not None for e in report["rounds"])
        ]
        if medians:
            lines += ["", f"{what}, the median of the rounds' p50s: " + ", ".join(medians) + "."]
    lines += [
        "",
        f"Machine: {machine_line(report['machine'])}. Command: `{report['command']}`.",
    ]
    return "\n".join(lines)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    settings, rounds, sequences, client = parse_args(argv)
    settings.workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = make_checkpoint(settings, settings.workdir / "checkpoint")
    prompts = make_prompts(checkpoint, settings)
    report = report_head("bench.generation.paired", argv, settings)
    report["sequences"] = sequences
    report["client"] = client
    report["rounds"] = measure(checkpoint, settings, rounds, sequences, client, prompts)
    report["summary"] = summarise(report["rounds"])
    markdown = render_markdown(report)
    print(markdown)
    if settings.write:
        write_results(settings.name, report, markdown, readme=False)
    return report


if __name__ == "__main__":
    run()
