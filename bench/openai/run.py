"""bench/openai: what the OpenAI-compatible frontend costs over calling Triton's gRPC directly.

Side by side in one run, on the same tritonserver and the same inputs, at 1 and 64 closed-loop clients:

- embeddings (the real all-MiniLM-L6-v2, the repository `modeldeploy build` writes by default):
  (a) direct: one text per request over gRPC (`tritonclient.grpc.aio`, as bench/dataplane sends);
  (b) openai: `POST /v1/embeddings` with one text (`encoding_format: base64`, what the `openai` SDK asks
  for by default) through the frontend process, over HTTP/1.1 keep-alive (aiohttp);
- generation (the random-weight Llama of bench/generation, no EOS, so every answer is exactly
  `--max-tokens` tokens): (a) direct: one gRPC stream per request with `stream: true`, the call the
  frontend itself makes (grpc.aio on Triton's stubs, read until Triton's final response); (b) openai:
  `POST /v1/completions` with `stream: true` (server-sent events, read until `[DONE]`).

The ratio is openai / direct throughput: 1.0 means no cost; the target is >= 0.9 at 64 clients. The load
generator, the frontend and tritonserver share this machine's CPUs, so the frontend's own CPU time is
part of what is measured (as it is in a pod, where the sidecar shares the node).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.common.checkpoints import minilm
from bench.common.loadgen import PooledHttpSender, TritonGrpcSender, closed_loop
from bench.common.machine import ForeignCpu, machine_line
from bench.common.report import fmt, markdown_table, write_results
from bench.common.sentences import load_texts
from bench.generation.run import Settings as GenerationSettings
from bench.generation.run import (
    add_measurement_arguments,
    generation_fields,
    make_checkpoint,
    make_prompts,
    report_head,
)

DIRECT, OPENAI = "direct gRPC", "OpenAI API"


@dataclass(frozen=True)
class Settings(GenerationSettings):
    """bench/generation's (the random-weight Llama's shape, its prompts, the load), plus repeats."""

    repeats: int
    calls_in_flight: int | None = None  # the sidecar's --calls-in-flight (None: its default)


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.openai", description=__doc__)
    add_measurement_arguments(
        parser,
        concurrency="1,64",
        warmup_s=6.0,
        window_s=20.0,
        workdir="/tmp/modeldeploy-bench-openai",
        name="openai-cpu",
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--min-prompt", type=int, default=16)
    parser.add_argument("--max-prompt", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="runs per level, contenders alternating")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument(
        "--calls-in-flight",
        type=int,
        default=None,
        help="the sidecar's --calls-in-flight (0: each request its own Triton call; default: its own)",
    )
    args = parser.parse_args(argv)
    return Settings(**generation_fields(args), repeats=args.repeats, calls_in_flight=args.calls_in_flight)


# -- senders ---------------------------------------------------------------------------------------------


class OpenAIEmbeddings(PooledHttpSender):
    def __init__(self, base_url: str, model: str) -> None:
        super().__init__(connections=256)
        self.url, self.model = base_url + "/embeddings", model

    async def __call__(self, text: str) -> None:
        await self.post_json(self.url, {"model": self.model, "input": text, "encoding_format": "base64"})


class OpenAIStream(PooledHttpSender):
    """A streamed completion; counts the tokens of the usage chunk."""

    def __init__(self, base_url: str, model: str, max_tokens: int, tokens: list[int]) -> None:
        super().__init__(connections=256)
        self.url, self.model, self.max_tokens, self.tokens = (
            base_url + "/completions",
            model,
            max_tokens,
            tokens,
        )

    async def __call__(self, prompt: str) -> None:
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with self.session().post(self.url, json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {(await response.read())[:200]!r}")
            completion = 0
            async for line in response.content:
                if line.startswith(b"data: {") and b'"usage":{' in line:
                    completion = json.loads(line[6:])["usage"]["completion_tokens"]
                elif line.startswith(b"data: [DONE]"):
                    break
        if completion != self.max_tokens:
            raise RuntimeError(f"{completion} tokens instead of {self.max_tokens}")
        self.tokens.append(completion)


class DirectStream:
    """The same gRPC stream call the frontend makes, from this process (no HTTP layer)."""

    def __init__(self, grpc_url: str, model: str, max_tokens: int, tokens: list[int]) -> None:
        from model_repo.openai_frontend.backend import TritonBackend

        self.backend, self.model, self.max_tokens, self.tokens = (
            TritonBackend(grpc_url),
            model,
            max_tokens,
            tokens,
        )

    async def __call__(self, prompt: str) -> None:
        generated = 0
        sampling = {"max_tokens": self.max_tokens, "temperature": 0}
        async for piece in self.backend.generate(self.model, prompt, True, sampling):
            generated = piece.output_tokens or generated
        if generated != self.max_tokens:
            raise RuntimeError(f"{generated} tokens instead of {self.max_tokens}")
        self.tokens.append(generated)

    async def close(self) -> None:
        await self.backend.close()


# -- measurement -----------------------------------------------------------------------------------------


async def _level(
    make: Callable[[], Any], inputs: Sequence[str], clients: int, settings: Settings, tokens: list[int]
) -> dict[str, Any]:
    sender = make()
    foreign = ForeignCpu()
    foreign.start()
    try:
        tokens.clear()
        result = await closed_loop(sender, inputs, clients, settings.window_s, settings.warmup_s)
    finally:
        await sender.close()
    summary = result.summary()
    summary["other_cpu_share"] = round(foreign.stop()[1], 3)
    if tokens:
        summary["tokens_per_s"] = round(result.requests * settings.max_tokens / settings.window_s, 1)
    return summary


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One level from its repeats: throughput over all windows, the median of the runs' latencies."""
    window = sum(run["window_s"] for run in runs)
    combined: dict[str, Any] = {
        "concurrency": runs[0]["concurrency"],
        "requests": sum(run["requests"] for run in runs),
        "errors": sum(run["errors"] for run in runs),
        "window_s": window,
        "throughput_rps": round(sum(run["requests"] for run in runs) / window, 2),
        "p50_ms": round(float(np.median([run["p50_ms"] for run in runs])), 3),
        "p99_ms": round(float(np.median([run["p99_ms"] for run in runs])), 3),
        "other_cpu_share": round(float(np.mean([run["other_cpu_share"] for run in runs])), 3),
        "runs": runs,
    }
    if "tokens_per_s" in runs[0]:
        combined["tokens_per_s"] = round(
            sum(run["tokens_per_s"] * run["window_s"] for run in runs) / window, 1
        )
    return combined


def measure(
    name: str,
    contenders: dict[str, Callable[[list[int]], Any]],
    inputs: Sequence[str],
    settings: Settings,
) -> dict[str, list[dict[str, Any]]]:
    """Each concurrency level `repeats` times, the contenders alternating (A B, then B A, ...), so that
    drifting load on the shared machine hits both alike."""
    levels: dict[str, list[dict[str, Any]]] = {contender: [] for contender in contenders}
    for clients in settings.concurrency:
        runs: dict[str, list[dict[str, Any]]] = {contender: [] for contender in contenders}
        for repeat in range(settings.repeats):
            order = list(contenders) if repeat % 2 == 0 else list(reversed(contenders))
            for contender in order:
                tokens: list[int] = []
                make = partial(contenders[contender], tokens)
                level = asyncio.run(_level(make, inputs, clients, settings, tokens))
                print(f"{name:<10} {contender:<12} {clients:>3} clients: {json.dumps(level)}", flush=True)
                runs[contender].append(level)
        for contender in contenders:
            levels[contender].append(_combine(runs[contender]))
    return levels


@contextlib.contextmanager
def serving(
    repository: Path, name: str, workdir: Path, calls_in_flight: int | None = None
) -> Iterator[tuple[str, str]]:
    """tritonserver on `repository` and the frontend next to it: (Triton's gRPC URL, the API's base URL).
    Their logs go to `workdir`; `calls_in_flight` is the sidecar's --calls-in-flight (None: its default)."""
    from model_repo.openai_local import LocalFrontend
    from model_repo.triton import TritonServer, free_port
    from model_repo.triton_args import repository_server_args

    args = ["--strict-readiness=true", *repository_server_args(), f"--model-repository={repository}"]
    with (
        TritonServer(
            None, extra_args=args, ready_timeout_s=600, log_path=workdir / f"{name}-triton.log"
        ) as server,
        LocalFrontend(
            repository,
            server.grpc_url,
            free_port(),
            log_path=workdir / f"{name}-openai.log",
            calls_in_flight=calls_in_flight,
        ) as frontend,
    ):
        yield server.grpc_url, frontend.base_url


def run_embeddings(settings: Settings) -> dict[str, Any]:
    from model_repo.build import build_repository
    from model_repo.options import BuildOptions

    model = minilm()
    built = build_repository(
        BuildOptions(source=f"file://{model.path}", model_name="minilm"),
        settings.workdir / "minilm-repository",
        force=True,  # the benchmark's own directory (Triton's stub leaves __pycache__ in it)
    )
    texts = list(load_texts())
    with serving(built.path, "minilm", settings.workdir, settings.calls_in_flight) as (grpc_url, base_url):
        contenders: dict[str, Callable[[list[int]], Any]] = {
            DIRECT: lambda _tokens: TritonGrpcSender(grpc_url, "minilm"),
            OPENAI: lambda _tokens: OpenAIEmbeddings(base_url, "minilm"),
        }
        levels = measure("embeddings", contenders, texts, settings)
    return {"model": model.description, "levels": levels}


def run_generation(settings: Settings) -> dict[str, Any]:
    from model_repo.build import build_repository
    from model_repo.options import BuildOptions

    checkpoint = make_checkpoint(settings, settings.workdir / "llama")
    prompts = make_prompts(checkpoint, settings)
    built = build_repository(
        BuildOptions(
            source=f"file://{checkpoint}",
            model_name="llama",
            max_concurrent_sequences=max(settings.concurrency),
        ),
        settings.workdir / "llama-repository",
        force=True,
    )
    with serving(built.path, "llama", settings.workdir, settings.calls_in_flight) as (grpc_url, base_url):
        contenders: dict[str, Callable[[list[int]], Any]] = {
            DIRECT: lambda tokens: DirectStream(grpc_url, "llama", settings.max_tokens, tokens),
            OPENAI: lambda tokens: OpenAIStream(base_url, "llama", settings.max_tokens, tokens),
        }
        levels = measure("generation", contenders, prompts, settings)
    model = (
        f"random-weight Llama, {settings.layers} layers, hidden {settings.hidden}, "
        f"prompts {settings.min_prompt}-{settings.max_prompt} tokens"
    )
    return {"model": model, "levels": levels, "max_tokens": settings.max_tokens}


def throughput_ratio(direct: dict[str, Any], other: dict[str, Any]) -> float:
    """A contender's throughput over direct gRPC's at one level (summaries of it); 0 where direct served
    nothing."""
    return round(other["throughput_rps"] / direct["throughput_rps"] if direct["throughput_rps"] else 0.0, 3)


def ratios(report: dict[str, Any]) -> dict[str, float]:
    found = {}
    for workload in ("embeddings", "generation"):
        levels = report[workload]["levels"]
        for direct, openai in zip(levels[DIRECT], levels[OPENAI], strict=True):
            found[f"{workload}@{direct['concurrency']}"] = throughput_ratio(direct, openai)
    return found


def against_direct_headers(other: str, other_requests: str | None = None) -> list[str]:
    """The headers of :func:`against_direct_cells`; ``other`` names the contender (``other_requests`` in
    its req/s column, where that name differs)."""
    return [
        "direct req/s",
        f"{other_requests or other} req/s",
        f"{other} / direct",
        "direct p50 ms",
        f"{other} p50 ms",
        "errors",
        "other CPU",
    ]


def against_direct_cells(direct: dict[str, Any], other: dict[str, Any], ratio: float) -> list[str]:
    """One level of a contender against direct gRPC (summaries of the same level): throughputs and their
    ratio, median latencies, errors and the CPU share other processes took, each side."""
    return [
        fmt(direct["throughput_rps"]),
        fmt(other["throughput_rps"]),
        fmt(ratio, 3),
        fmt(direct["p50_ms"]),
        fmt(other["p50_ms"]),
        f"{direct['errors']}/{other['errors']}",
        f"{direct['other_cpu_share']:.0%}/{other['other_cpu_share']:.0%}",
    ]


def render_markdown(report: dict[str, Any]) -> str:
    rows = []
    for workload in ("embeddings", "generation"):
        levels = report[workload]["levels"]
        for direct, openai in zip(levels[DIRECT], levels[OPENAI], strict=True):
            clients = direct["concurrency"]
            ratio = report["ratios"][f"{workload}@{clients}"]
            rows.append([workload, str(clients), *against_direct_cells(direct, openai, ratio)])
    measured = (
        f"Embeddings: {report['embeddings']['model']}. Generation: {report['generation']['model']}, "
        f"{report['generation']['max_tokens']} tokens per answer, streamed."
    )
    return against_direct_markdown(
        report, measured, ["workload", "clients", *against_direct_headers("OpenAI")], rows
    )


def against_direct_markdown(
    report: dict[str, Any], measured: str, headers: list[str], rows: list[list[str]]
) -> str:
    """A report of contenders against direct gRPC as markdown: the machine, what was `measured`, a table
    of the levels and the command."""
    table = markdown_table(headers, rows)
    return f"{machine_line(report['machine'])}\n\n{measured}\n\n{table}\n\nCommand: `{report['command']}`"


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    settings = parse_args(argv)
    settings.workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report = report_head("bench.openai", argv, settings)
    report["embeddings"] = run_embeddings(settings)
    report["generation"] = run_generation(settings)
    report["ratios"] = ratios(report)
    return finish(report, settings, started, render_markdown)


def finish(
    report: dict[str, Any], settings: Settings, started: float, render: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Times the report from ``started``, prints it as markdown and, unless --no-write, writes both to
    bench/results and the README (bench/rerank ends so too)."""
    report["duration_s"] = round(time.monotonic() - started, 1)
    markdown = render(report)
    print(markdown)
    if settings.write:
        write_results(settings.name, report, markdown)
    return report
