"""bench/generation/loadgen: the field's load generator beside ours, on the same server and workload.

NVIDIA's aiperf (PyPI `aiperf`, its own virtualenv: `make bench-loadgen`) and our own closed-loop client
drive one random-weight Llama (bench/generation's, no EOS) through the OpenAI sidecar with the same
workload: the same prompts of exactly `--isl` tokens (written to a file aiperf reads), streamed
`/v1/completions`, greedy, `max_tokens` = `min_tokens` = `--osl` so that every answer has exactly `--osl`
tokens. At each concurrency the two take turns, A B A B for `--rounds` rounds, on the same server.

Each side measures as it does:
- aiperf: its own closed loop at that concurrency; a warm-up phase (`--warmup-s`), then requests issued
  for `--window-s` and awaited to the end; output tokens/s = the output tokens of those requests over the
  time from the first one's start to the last one's end (its `output_token_throughput`), tokens counted by
  the server's `usage` (`--use-server-token-count`);
- ours: `--warmup-s` then a `--window-s` window; output tokens/s = the tokens of the answers completed
  inside the window over the window (as bench/generation counts), tokens from the `usage` chunk.
TTFT is the first streamed text; ITL is (request latency - TTFT) / (output tokens - 1) for both.

Both clients run on the machine that runs tritonserver and the sidecar, so each one's own CPU comes out of
the server's; the report gives each client's CPU seconds per window beside its throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common.loadgen import PooledHttpSender, closed_loop, percentile
from bench.common.machine import ForeignCpu, machine_line
from bench.common.report import fmt, markdown_table
from bench.generation.run import Settings as GenerationSettings
from bench.generation.run import generation_fields, make_checkpoint, make_prompts, report_head

AIPERF, OURS = "aiperf", "ours"
# The pin bench/common/install_aiperf.sh installs, into the virtualenv named after it.
AIPERF_PIN = Path(__file__).resolve().parent.parent / "common" / "aiperf-requirements.txt"
DEFAULT_AIPERF_VENV = (
    Path(os.environ.get("MODELDEPLOY_CACHE", Path.home() / ".cache" / "modeldeploy"))
    / "client-venvs"
    / AIPERF_PIN.read_text().strip().replace("==", "-")
)
MODEL = "llama"
# The bar: the field's load generator agrees with ours within this share on throughput.
AGREEMENT = 0.10


@dataclass(frozen=True)
class Settings(GenerationSettings):
    """bench/generation's (the Llama's shape; prompts min_prompt = max_prompt = ISL; max_tokens = OSL),
    plus the rounds and where aiperf is."""

    rounds: int
    aiperf_venv: Path
    aiperf_request_rate: float


# aiperf's --request-rate beside --concurrency. With --concurrency alone aiperf 0.13 issues requests in
# its "concurrency burst" mode, whose loop yields to the event loop without sleeping while every slot is
# taken: its timing manager kept 52-81% of a core busy (py-spy: the stop-condition checks and
# `yield_to_event_loop`), on the 2 cores that also run the server. With a rate far above what the server
# completes (about 11 requests/s at 16 clients here) the clients stay the bound, and a freed slot waits
# at most one 10 ms tick, against requests of about 1.5 s.
AIPERF_REQUEST_RATE = 100.0


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.generation.loadgen", description=__doc__)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--isl", type=int, default=128, help="tokens in every prompt")
    parser.add_argument("--osl", type=int, default=64, help="tokens in every answer")
    parser.add_argument("--concurrency", default="16", help="comma-separated client counts")
    parser.add_argument("--warmup-s", type=float, default=6.0)
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2, help="A B rounds per level (aiperf, then ours)")
    parser.add_argument("--aiperf-venv", type=Path, default=DEFAULT_AIPERF_VENV)
    parser.add_argument(
        "--aiperf-request-rate",
        type=float,
        default=AIPERF_REQUEST_RATE,
        help="aiperf's --request-rate beside --concurrency (0: concurrency alone, aiperf's busy loop)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/modeldeploy-bench-loadgen"))
    parser.add_argument("--name", default="loadgen-cpu")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results or READMEs")
    args = parser.parse_args(argv)
    args.min_prompt = args.max_prompt = args.isl
    args.max_tokens = args.osl
    return Settings(
        **generation_fields(args),
        rounds=args.rounds,
        aiperf_venv=args.aiperf_venv,
        aiperf_request_rate=args.aiperf_request_rate,
    )


# -- aiperf ----------------------------------------------------------------------------------------------


def aiperf_version(venv: Path) -> str:
    """The aiperf the virtualenv holds (as installed, not as pinned)."""
    program = "from importlib.metadata import version; print(version('aiperf'))"
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", program], check=True, capture_output=True, text=True
    ).stdout.strip()


def write_dataset(prompts: Sequence[str], osl: int, path: Path) -> Path:
    """The prompts as aiperf's `single_turn` JSONL, each asking for `osl` tokens."""
    path.write_text("".join(json.dumps({"text": p, "output_length": osl}) + "\n" for p in prompts))
    return path


def aiperf_command(
    settings: Settings, base_url: str, checkpoint: Path, dataset: Path, clients: int, artifacts: Path
) -> list[str]:
    """aiperf's closed loop at `clients` on the dataset's prompts, tokenizer read from the checkpoint
    (offline), answers of exactly OSL tokens (min_tokens, vLLM's extra field, which the sidecar takes)."""
    extra = {"min_tokens": settings.max_tokens, "temperature": 0}
    return [
        str(settings.aiperf_venv / "bin" / "aiperf"),
        "profile",
        f"--model={MODEL}",
        f"--url={base_url.removesuffix('/v1')}",
        "--endpoint-type=completions",
        "--streaming",
        f"--tokenizer={checkpoint}",
        f"--input-file={dataset}",
        "--custom-dataset-type=single_turn",
        f"--extra-inputs={json.dumps(extra)}",
        "--use-server-token-count",
        f"--concurrency={clients}",
        *([f"--request-rate={settings.aiperf_request_rate:g}"] if settings.aiperf_request_rate > 0 else []),
        f"--warmup-duration={settings.warmup_s:g}",
        f"--benchmark-duration={settings.window_s:g}",
        "--benchmark-grace-period=120",
        "--random-seed=0",
        # Only the load generator's own work: no scraping of /metrics or of GPU exporters, summary files.
        "--no-server-metrics",
        "--no-gpu-telemetry",
        "--export-level=summary",
        "--ui=none",
        f"--artifact-dir={artifacts}",
    ]


def _metric(export: dict[str, Any], tag: str, stat: str) -> float:
    value = export.get(tag, {}).get(stat)
    return float(value) if value is not None else float("nan")


def parse_aiperf_export(export: dict[str, Any]) -> dict[str, Any]:
    """What the report takes from aiperf's profile_export_aiperf.json (each metric an object of
    statistics: avg, p50, ...; latencies in ms; failed requests counted by kind in error_summary)."""
    return {
        "tokens_per_s": _metric(export, "output_token_throughput", "avg"),
        "requests": int(_metric(export, "request_count", "avg")),
        "errors": sum(int(kind["count"]) for kind in export.get("error_summary") or []),
        "complete": bool(export.get("is_complete")) and not export.get("was_cancelled"),
        "duration_s": _metric(export, "benchmark_duration", "avg"),
        "ttft_p50_ms": _metric(export, "time_to_first_token", "p50"),
        "itl_p50_ms": _metric(export, "inter_token_latency", "p50"),
        "latency_p50_ms": _metric(export, "request_latency", "p50"),
        "osl_avg": _metric(export, "output_sequence_length", "avg"),
    }


def run_aiperf(
    settings: Settings, base_url: str, checkpoint: Path, dataset: Path, clients: int, attempt: str
) -> dict[str, Any]:
    artifacts = settings.workdir / "aiperf" / f"c{clients}-{attempt}"
    command = aiperf_command(settings, base_url, checkpoint, dataset, clients, artifacts)
    # Not HF_HUB_OFFLINE: aiperf 0.13 then looks the tokenizer's directory up as a hub cache entry and
    # fails; a local directory is read without the network either way.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    log = settings.workdir / f"aiperf-c{clients}-{attempt}.log"
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    foreign = ForeignCpu()
    foreign.start()
    began = time.monotonic()
    with log.open("wb") as out:
        finished = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=3600)
    wall = time.monotonic() - began
    foreign_s = foreign.stop()[0]
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if finished.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"aiperf exited {finished.returncode}:\n{tail}")
    exports = sorted(artifacts.rglob("profile_export_aiperf.json"))
    if not exports:
        raise RuntimeError(f"aiperf wrote no profile_export_aiperf.json under {artifacts}")
    level = parse_aiperf_export(json.loads(exports[-1].read_text()))
    # aiperf's processes are this process's only children that end during its run. They have left /proc
    # when ForeignCpu looks for this process's descendants, so their CPU is taken out of its foreign time.
    cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    level.update(
        clients=clients,
        client_cpu_s=round(cpu, 1),
        client_wall_s=round(wall, 1),
        other_cpu_share=round(max(0.0, foreign_s - cpu) / (wall * (os.cpu_count() or 1)), 3),
        export=str(exports[-1]),
    )
    return level


# -- ours ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    started: float
    first_text: float
    finished: float
    tokens: int


class TimedCompletionStream(PooledHttpSender):
    """A streamed `/v1/completions` of exactly `osl` tokens, timed: start, first text, end; tokens from
    the usage chunk."""

    def __init__(self, base_url: str, settings: Settings, answers: list[Answer]) -> None:
        super().__init__(connections=256)
        self.url, self.answers = base_url + "/completions", answers
        self.body = {
            "model": MODEL,
            "max_tokens": settings.max_tokens,
            "min_tokens": settings.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    async def __call__(self, prompt: str) -> None:
        started = time.perf_counter()
        first: float | None = None
        tokens = 0
        async with self.session().post(self.url, json={**self.body, "prompt": prompt}) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {(await response.read())[:200]!r}")
            async for line in response.content:
                if line.startswith(b"data: [DONE]"):
                    break
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                elif first is None and chunk["choices"] and chunk["choices"][0].get("text"):
                    first = time.perf_counter()
        finished = time.perf_counter()
        if tokens != self.body["max_tokens"]:
            raise RuntimeError(f"{tokens} tokens instead of {self.body['max_tokens']}")
        self.answers.append(Answer(started, first or finished, finished, tokens))


def summarize_answers(answers: Sequence[Answer], window_start: float, window_s: float) -> dict[str, Any]:
    """Output tokens/s of the answers completed inside the window, and their TTFT, ITL and latency."""
    inside = [a for a in answers if window_start <= a.finished <= window_start + window_s]
    ttft = [(a.first_text - a.started) * 1000 for a in inside]
    itl = [(a.finished - a.first_text) * 1000 / (a.tokens - 1) for a in inside if a.tokens > 1]
    return {
        "tokens_per_s": sum(a.tokens for a in inside) / window_s,
        "requests": len(inside),
        "ttft_p50_ms": percentile(ttft, 50),
        "itl_p50_ms": percentile(itl, 50),
        "latency_p50_ms": percentile([(a.finished - a.started) * 1000 for a in inside], 50),
    }


async def _ours(base_url: str, settings: Settings, prompts: Sequence[str], clients: int) -> dict[str, Any]:
    answers: list[Answer] = []
    sender = TimedCompletionStream(base_url, settings, answers)
    window_start: list[float] = []

    async def mark() -> None:
        window_start.append(time.perf_counter())

    try:
        result = await closed_loop(sender, prompts, clients, settings.window_s, settings.warmup_s, mark)
    finally:
        await sender.close()
    summary = summarize_answers(answers, window_start[0], settings.window_s)
    summary["errors"] = result.errors
    summary["first_error"] = result.first_error
    return summary


def run_ours(base_url: str, settings: Settings, prompts: Sequence[str], clients: int) -> dict[str, Any]:
    foreign = ForeignCpu()
    foreign.start()
    cpu_before, began = time.process_time(), time.monotonic()
    level = asyncio.run(_ours(base_url, settings, prompts, clients))
    cpu, wall = time.process_time() - cpu_before, time.monotonic() - began
    level.update(
        clients=clients,
        duration_s=settings.window_s,
        complete=True,
        client_cpu_s=round(cpu, 1),
        client_wall_s=round(wall, 1),
        other_cpu_share=round(foreign.stop()[1], 3),
    )
    return level


# -- the run ---------------------------------------------------------------------------------------------


def combine(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One side of one level over its rounds: tokens/s over all the rounds' time, latencies the median of
    the rounds' medians."""
    duration = sum(run["duration_s"] for run in runs)
    return {
        "clients": runs[0]["clients"],
        "tokens_per_s": round(sum(run["tokens_per_s"] * run["duration_s"] for run in runs) / duration, 1),
        "requests": sum(run["requests"] for run in runs),
        "errors": sum(run["errors"] for run in runs),
        **{
            key: round(float(np.median([run[key] for run in runs])), 2)
            for key in ("ttft_p50_ms", "itl_p50_ms", "latency_p50_ms")
        },
        "complete": all(run["complete"] for run in runs),
        # Cores the client used on average over its whole runs (start-up, warm-up, window, drain).
        "client_cores": round(
            sum(run["client_cpu_s"] for run in runs) / sum(run["client_wall_s"] for run in runs), 2
        ),
        "other_cpu_share": round(float(np.mean([run["other_cpu_share"] for run in runs])), 3),
        "runs": list(runs),
    }


@contextlib.contextmanager
def _serving(settings: Settings, checkpoint: Path) -> Iterator[str]:
    from bench.openai.run import serving
    from model_repo.build import build_repository
    from model_repo.options import BuildOptions

    built = build_repository(
        BuildOptions(
            source=f"file://{checkpoint}",
            model_name=MODEL,
            max_concurrent_sequences=max(settings.concurrency),
        ),
        settings.workdir / "llama-repository",
        force=True,
    )
    with serving(built.path, MODEL, settings.workdir) as (_grpc_url, base_url):
        yield base_url


def measure(settings: Settings, checkpoint: Path, prompts: Sequence[str]) -> list[dict[str, Any]]:
    dataset = write_dataset(prompts, settings.max_tokens, settings.workdir / "prompts.jsonl")
    levels = []
    with _serving(settings, checkpoint) as base_url:
        for clients in settings.concurrency:
            runs: dict[str, list[dict[str, Any]]] = {AIPERF: [], OURS: []}
            for round_ in range(settings.rounds):
                aiperf = run_aiperf(settings, base_url, checkpoint, dataset, clients, f"round{round_}")
                print(f"aiperf {clients:>3} clients, round {round_}: {json.dumps(aiperf)}", flush=True)
                runs[AIPERF].append(aiperf)
                ours = run_ours(base_url, settings, prompts, clients)
                print(f"ours   {clients:>3} clients, round {round_}: {json.dumps(ours)}", flush=True)
                runs[OURS].append(ours)
            level = {"clients": clients, AIPERF: combine(runs[AIPERF]), OURS: combine(runs[OURS])}
            level["ratio"] = ratio(level)
            levels.append(level)
    return levels


def ratio(level: dict[str, Any]) -> float:
    """aiperf's output tokens/s over ours (NaN where ours measured nothing)."""
    ours = level[OURS]["tokens_per_s"]
    return round(level[AIPERF]["tokens_per_s"] / ours, 3) if ours else float("nan")


def render_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    rows = [
        [
            str(level["clients"]),
            fmt(level[AIPERF]["tokens_per_s"]),
            fmt(level[OURS]["tokens_per_s"]),
            fmt(level["ratio"], 3),
            "yes" if abs(level["ratio"] - 1) <= AGREEMENT else "NO",
            f"{fmt(level[AIPERF]['ttft_p50_ms'])} / {fmt(level[OURS]['ttft_p50_ms'])}",
            f"{fmt(level[AIPERF]['itl_p50_ms'], 2)} / {fmt(level[OURS]['itl_p50_ms'], 2)}",
            f"{level[AIPERF]['client_cores']:.2f} / {level[OURS]['client_cores']:.2f}",
            f"{level[AIPERF]['errors']}/{level[OURS]['errors']}",
            f"{level[AIPERF]['other_cpu_share']:.0%} / {level[OURS]['other_cpu_share']:.0%}",
        ]
        for level in report["levels"]
    ]
    incomplete = [str(lv["clients"]) for lv in report["levels"] if not lv[AIPERF]["complete"]]
    table = markdown_table(
        [
            "clients",
            "aiperf tok/s",
            "ours tok/s",
            "aiperf / ours",
            f"within {AGREEMENT:.0%}",
            "TTFT p50 ms aiperf / ours",
            "ITL p50 ms aiperf / ours",
            "client cores aiperf / ours",
            "errors",
            "other processes' CPU",
        ],
        rows,
    )
    return "\n".join(
        [
            f"{machine_line(report['machine'])}",
            "",
            f"Model: random-weight Llama, {s['layers']} layers, hidden {s['hidden']}, GQA. Workload: the "
            f"same prompts of {s['max_prompt']} tokens for both clients, {s['max_tokens']}-token answers "
            "(min_tokens = max_tokens), greedy, streamed `/v1/completions` through the OpenAI sidecar. "
            f"aiperf {report['aiperf_version']} runs as a closed loop of the level's clients "
            + (
                f"with `--request-rate {s['aiperf_request_rate']:g}` beside `--concurrency` (far above what "
                "the server completes, so the clients are the bound; without it aiperf's timing manager "
                "spins on a core). "
                if s.get("aiperf_request_rate")
                else "(`--concurrency` alone). "
            )
            + f"aiperf and ours alternate (A B) for {s['rounds']} round(s) per "
            f"level, each {s['warmup_s']:g} s warm-up + {s['window_s']:g} s window; tokens/s over all "
            "rounds, latencies the median of the rounds' p50s.",
            "",
            table,
            "",
            f"Both clients run on the machine that runs tritonserver and the sidecar "
            f"({report['machine']['cores']} cores), so each client's own CPU is taken from the server's: "
            "the client cores column is the CPU time of aiperf's processes, or of this benchmark's process "
            "for ours, over each client's whole run (aiperf's includes its start-up), in cores. A heavier "
            "client leaves the server less CPU and so lowers the throughput it measures; on a machine this "
            "small that is part of any difference between the two. aiperf's time also includes its "
            "ramp-up from idle and the drain of the last requests; ours counts the answers completed "
            "inside a window after warm-up.",
            *(
                ["", "INCOMPLETE: aiperf reported a cancelled or incomplete run at " + ", ".join(incomplete)]
                if incomplete
                else []
            ),
            "",
            f"Command: `{report['command']}`",
        ]
    )


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from bench.openai.run import finish

    settings = parse_args(argv)
    if not (settings.aiperf_venv / "bin" / "aiperf").exists():
        raise SystemExit(f"no aiperf in {settings.aiperf_venv}: run `make bench-loadgen` first")
    settings.workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    checkpoint = make_checkpoint(settings, settings.workdir / "llama")
    prompts = make_prompts(checkpoint, settings)
    report = report_head("bench.generation.loadgen", argv, settings)
    report["aiperf_version"] = aiperf_version(settings.aiperf_venv)
    report["levels"] = measure(settings, checkpoint, prompts)
    return finish(report, settings, started, render_markdown)  # type: ignore[arg-type]


if __name__ == "__main__":
    run()
