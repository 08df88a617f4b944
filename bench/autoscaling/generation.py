"""bench/autoscaling's generation workload: a random-weight Llama (bench/generation's, no EOS) served by the
generation runtime with its default sequence slots, driven by streamed generation requests.

Requests: prompts of 16-128 tokens, answers of 32-64 tokens (drawn per request), greedy, one gRPC stream
each; what is timed is the first token. The signals are the runtime's gauges (signals.GENERATION_SIGNALS).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common.loadgen import FirstToken, TritonGenerationSender, percentile
from bench.common.metrics import Scrape

MODEL_NAME = "model"
LAYERS, HIDDEN = 2, 256
MIN_PROMPT, MAX_PROMPT = 16, 128
MIN_OUTPUT, MAX_OUTPUT = 32, 64
_PARAMETER = r'key:\s*"{key}"\s*value:?\s*\{{\s*string_value:\s*"([^"]*)"'


@dataclass(frozen=True)
class GenerationServer:
    server: Any  # model_repo.triton.TritonServer
    prompts: list[str]
    slots: int  # max_concurrent_sequences of the built model (the runtime's default)
    queued: int  # max_queued_requests: beyond slots + this, requests are refused
    description: str


def config_parameter(config_pbtxt: str, key: str) -> str:
    """A `parameters` entry of a config.pbtxt."""
    match = re.search(_PARAMETER.format(key=re.escape(key)), config_pbtxt)
    if match is None:
        raise ValueError(f"config.pbtxt has no parameter {key}")
    return match.group(1)


@contextlib.contextmanager
def serve_generator(workdir: Path, device: str) -> Iterator[GenerationServer]:
    """Make the Llama and its prompts, build the repository with the runtime's defaults, serve it."""
    from bench.generation.run import make_checkpoint, make_prompts, serve
    from bench.generation.run import parse_args as generation_settings
    from model_repo.build import build_repository
    from model_repo.options import BuildOptions, ModelFormat

    shape = generation_settings(
        [
            *("--layers", str(LAYERS), "--hidden", str(HIDDEN), "--max-tokens", str(MAX_OUTPUT)),
            *("--min-prompt", str(MIN_PROMPT), "--max-prompt", str(MAX_PROMPT), "--workdir", str(workdir)),
        ]
    )
    checkpoint = make_checkpoint(shape, workdir / "checkpoint")
    prompts = make_prompts(checkpoint, shape)
    options = BuildOptions(
        source=f"file://{checkpoint}",
        model_name=MODEL_NAME,
        device="gpu" if device == "cuda" else "cpu",
        format=ModelFormat.PYTHON,  # on a GPU `auto` would pick vLLM, which this benchmark does not carry
    )
    built = build_repository(options, workdir / "repository")
    config = (built.path / MODEL_NAME / "config.pbtxt").read_text()
    description = (
        f"random-weight Llama, {LAYERS} layers, hidden {HIDDEN}, GQA; prompts {MIN_PROMPT}-{MAX_PROMPT} "
        f"tokens, answers {MIN_OUTPUT}-{MAX_OUTPUT} tokens (no EOS), greedy, streamed"
    )
    with serve(built.path, workdir / "triton.log") as server:
        yield GenerationServer(
            server,
            prompts,
            int(config_parameter(config, "max_concurrent_sequences")),
            int(config_parameter(config, "max_queued_requests")),
            description,
        )


def new_sender(server: Any, seed: int) -> TritonGenerationSender:
    return TritonGenerationSender(server.grpc_url, MODEL_NAME, MIN_OUTPUT, MAX_OUTPUT, seed=seed)


def is_idle(sample: Scrape) -> bool:
    return (
        sample.get("modeldeploy_generation_sequences_running") == 0
        and sample.get("modeldeploy_generation_requests_waiting") == 0
    )


def ttft_summary(requests: Sequence[FirstToken]) -> dict[str, Any]:
    """Requests sent in a span of time: how many, how many got no first token, and the percentiles of the
    time to first token of the others."""
    answered = [request.ttft_ms for request in requests if request.ttft_ms is not None]
    return {
        "requests": len(requests),
        "refused_or_failed": len(requests) - len(answered),
        "ttft_p50_ms": round(percentile(answered, 50), 1) if answered else None,
        "ttft_p99_ms": round(percentile(answered, 99), 1) if answered else None,
    }


def ttft_by_phase(
    requests: Sequence[FirstToken], started: float, phases: Sequence[tuple[str, float, float]]
) -> list[dict[str, Any]]:
    """ttft_summary of the requests *sent* inside each (name, begin, end) phase, times relative to
    `started`; a request belongs to the phase it arrived in, however late its first token came."""
    return [
        {
            "phase": name,
            "start_s": begin,
            "end_s": end,
            **ttft_summary([r for r in requests if begin <= r.sent - started < end]),
        }
        for name, begin, end in phases
    ]
