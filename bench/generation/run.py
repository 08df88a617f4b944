"""bench/generation: generated tokens/s and time to first token at 1-64 concurrent clients, side by side:

(a) ours: the generated `python`-format repository (continuous batching), streaming over gRPC, and at the
    `--whole-answers` levels again without streaming (each answer one response, as the baseline's);
(b) the per-request baseline: Triton's tutorial-style Python model calling a `pipeline` per request;
(c) the in-process limit: transformers' `generate_batch` over the same number of prompts at once.

The model is a random-weight Llama made here (no downloads), with no EOS token so that every answer is
exactly `--max-tokens` tokens for every contender. Closed loop: each client sends its next prompt when its
last answer is complete; tokens/s counts the tokens that reached the clients inside the measurement window
(streamed ones when they arrive, the baseline's with its whole answer); time to first token and latency are
those of the answers completed inside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.common.loadgen import percentile
from bench.common.machine import describe_machine, machine_line
from bench.common.metrics import (
    GENERATION_PREFILL,
    GENERATION_QUEUE,
    GENERATION_TTFT,
    histogram_mean_ms,
    scrape,
)
from bench.common.quiet import QuietPolicy, add_quiet_options, guarded, quiet_policy
from bench.common.report import (
    RESULTS_DIR,
    fmt,
    markdown_table,
    save_figure,
    write_results,
)
from bench.common.sentences import load_texts
from model_repo.triton_args import DEFAULT_CPU_WAIT_POLICY, CpuWaitPolicy, cpu_wait_environment

BASELINE_DIR = Path(__file__).resolve().parent.parent / "baselines" / "hf_tutorial_generation"
OURS, BASELINE = "ours", "baseline"
# A level during which other processes used more of the machine's CPU than this is marked disturbed.
DISTURBED_SHARE = 0.05


@dataclass(frozen=True)
class Settings:
    layers: int
    hidden: int
    max_tokens: int
    min_prompt: int
    max_prompt: int
    concurrency: tuple[int, ...]
    warmup_s: float
    window_s: float
    workdir: Path
    name: str
    write: bool
    device: str  # "cpu" or "cuda" (float16 there, ours built for the GPU in the python format)
    quiet: QuietPolicy
    shared_prefix: int  # tokens; 0: no shared-prefix workload
    cpu_wait_policy: str  # ours' spec.triton.cpuWaitPolicy (model_repo.triton_args)
    # Levels (client counts) at which ours is measured again with `stream` false: whole answers, like the
    # per-request baseline's, so the two compare like for like.
    whole_answers: tuple[int, ...]
    # Answer lengths, (fewest, most) tokens, one length per prompt, where a workload spreads them (this
    # module's shared-prefix workload, the same in both of its halves; every level of
    # bench.generation.revisions); None: every answer max_tokens long.
    spread_answer_tokens: tuple[int, int] | None


# On the CPU of a shared machine: never waits for a quiet machine nor repeats (other CPU is reported).
NEVER_WAIT = QuietPolicy(max_foreign_share=1.0, retries=0, max_wait_s=0.0)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The random-weight Llama's shape and the prompts' and answers' lengths (see :func:`model_fields`)."""
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--min-prompt", type=int, default=16)
    parser.add_argument("--max-prompt", type=int, default=256)


def add_measurement_arguments(
    parser: argparse.ArgumentParser,
    *,
    concurrency: str | None,
    warmup_s: float,
    window_s: float,
    workdir: str,
    name: str,
) -> None:
    """The load's and the results' arguments that :func:`measurement_fields` reads (--concurrency left
    out where the caller fixes it)."""
    if concurrency is not None:
        parser.add_argument("--concurrency", default=concurrency)
    parser.add_argument("--warmup-s", type=float, default=warmup_s)
    parser.add_argument("--window-s", type=float, default=window_s)
    parser.add_argument("--workdir", type=Path, default=Path(workdir))
    parser.add_argument("--name", default=name)
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results or READMEs")


def add_cpu_wait_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cpu-wait-policy",
        choices=[policy.value for policy in CpuWaitPolicy],
        default=DEFAULT_CPU_WAIT_POLICY.value,
        help="ours served with this spec.triton.cpuWaitPolicy (default: the operator's; the baseline and "
        "in-process keep OpenMP's own default)",
    )


def add_round_arguments(parser: argparse.ArgumentParser, rounds: int) -> None:
    """What a benchmark whose contenders take windows in turn, round by round, takes beside the model's
    and the load's arguments: --rounds, ours' CPU wait policy and the quiet-machine options per window."""
    parser.add_argument("--rounds", type=int, default=rounds)
    add_cpu_wait_argument(parser)
    add_quiet_options(parser, "window", retries=1)


def parse_round_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments of a parser given :func:`add_round_arguments`, its --rounds checked (no levels
    without streaming: those benchmarks measure streamed windows)."""
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.whole_answers = ""
    return args


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__)
    add_model_arguments(parser)
    add_measurement_arguments(
        parser,
        concurrency="1,4,16,64",
        warmup_s=5.0,
        window_s=20.0,
        workdir="/tmp/modeldeploy-bench-generation",
        name="generation-cpu",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--shared-prefix",
        type=int,
        default=0,
        help="also measure ours on prompts sharing a prefix of this many tokens against unique prompts of "
        "the same length (time to first token with and without prefix-cache hits)",
    )
    parser.add_argument(
        "--prefix-answer-tokens",
        dest="spread_answer_tokens",
        default="",
        metavar="FEWEST-MOST",
        help="the shared-prefix workload's answers spread evenly over this many tokens, one length per "
        "prompt (the same in both of its workloads), instead of every answer --max-tokens long: clients "
        "then finish, and come back, at different times, as a chat service's clients do",
    )
    add_cpu_wait_argument(parser)
    parser.add_argument(
        "--whole-answers",
        default="1",
        help="client counts (comma-separated; empty: none) at which ours is measured again without "
        "streaming, each answer in one response as the baseline sends it",
    )
    add_quiet_options(parser, "level", retries=1)
    return Settings(**generation_fields(parser.parse_args(argv)))


def model_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Settings' fields from the arguments :func:`add_model_arguments` defines."""
    return dict(
        layers=args.layers,
        hidden=args.hidden,
        max_tokens=args.max_tokens,
        min_prompt=args.min_prompt,
        max_prompt=args.max_prompt,
    )


def measurement_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Settings' fields of the load and of where results go, from the arguments --concurrency, --warmup-s,
    --window-s, --workdir, --name and --no-write (bench/openai and bench/rerank define them too)."""
    return dict(
        concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        warmup_s=args.warmup_s,
        window_s=args.window_s,
        workdir=args.workdir,
        name=args.name,
        write=not args.no_write,
    )


def generation_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Settings' fields from the arguments parse_args defines (bench/openai defines them too)."""
    return dict(
        **model_fields(args),
        **measurement_fields(args),
        device=getattr(args, "device", "cpu"),
        # bench/openai defines neither option: never waits, never repeats.
        # Waits and repeats only when --max-foreign-cpu asks; disturbed levels are marked either way.
        quiet=quiet_policy(args, quick=True) if hasattr(args, "max_foreign_cpu") else NEVER_WAIT,
        shared_prefix=getattr(args, "shared_prefix", 0),
        cpu_wait_policy=getattr(args, "cpu_wait_policy", DEFAULT_CPU_WAIT_POLICY.value),
        whole_answers=tuple(int(c) for c in getattr(args, "whole_answers", "").split(",") if c.strip()),
        spread_answer_tokens=token_range(getattr(args, "spread_answer_tokens", "")),
    )


def token_range(text: str) -> tuple[int, int] | None:
    """ "16-112" as (16, 112); "" as None."""
    if not text.strip():
        return None
    fewest, _, most = text.partition("-")
    low, high = int(fewest), int(most or fewest)
    if not 1 <= low <= high:
        raise ValueError(f"a token range needs 1 <= fewest <= most, got {text!r}")
    return low, high


def answer_lengths(count: int, low: int, high: int) -> list[int]:
    """`count` answer lengths spread evenly over [low, high] (their mean is the range's middle), in a fixed
    shuffled order."""
    lengths: list[int] = np.rint(np.linspace(low, high, count)).astype(int).tolist()
    np.random.default_rng(1).shuffle(lengths)
    return lengths


def answer_tokens(settings: Settings, *workloads: Sequence[str]) -> dict[str, int] | None:
    """Each prompt's answer length where `settings` spread them (the i-th prompt of every workload gets
    the same one), for `ours_level`; None where every answer is max_tokens long."""
    if settings.spread_answer_tokens is None:
        return None
    lengths: dict[str, int] = {}
    for prompts in workloads:
        spread = answer_lengths(len(prompts), *settings.spread_answer_tokens)
        lengths.update(zip(prompts, spread, strict=True))
    return lengths


def report_head(module: str, argv: Sequence[str] | None, settings: Settings) -> dict[str, Any]:
    """How the reports of ``python -m <module>`` begin, for every benchmark on these Settings: the command
    line, the settings (as JSON takes them) and the machine."""
    return {
        "command": f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v.__dict__ if isinstance(v, QuietPolicy) else v)
            for k, v in settings.__dict__.items()
        },
        "machine": describe_machine(),
    }


def make_checkpoint(settings: Settings, directory: Path) -> Path:
    """A random-weight Llama (grouped-query attention) with a byte-level BPE trained on the bench texts."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(load_texts()), vocab_size=2048, min_frequency=1, special_tokens=["<s>"])
    longest_answer = max((settings.max_tokens, *(settings.spread_answer_tokens or ())))
    context = settings.max_prompt + settings.shared_prefix + longest_answer + 64
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe._tokenizer, bos_token="<s>", model_max_length=context
    )
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(0)
    heads = max(1, settings.hidden // 64)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden,
        intermediate_size=settings.hidden * 8 // 3,
        num_hidden_layers=settings.layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=None,  # no EOS: every answer is max_tokens long
    )
    model: Any = LlamaForCausalLM(config)
    model.eval()
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=tokenizer.bos_token_id, eos_token_id=None
    )
    model.save_pretrained(str(directory))
    return directory


def make_prompts(checkpoint: Path, settings: Settings, count: int = 256) -> list[str]:
    """Prompts whose token counts spread evenly over [min_prompt, max_prompt]."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    words = " ".join(load_texts()).split()
    prompts = []
    rng = np.random.default_rng(0)
    for index in range(count):
        target = settings.min_prompt + (settings.max_prompt - settings.min_prompt) * index // max(
            1, count - 1
        )
        start = int(rng.integers(0, len(words) - 400))
        length = target
        while True:
            text = " ".join(words[start : start + length])
            tokens = len(tokenizer(text)["input_ids"])
            if tokens >= target or length > 600:
                break
            length += max(1, (target - tokens) // 2)
        ids = tokenizer(text)["input_ids"][:target]
        prompts.append(str(tokenizer.decode(ids, skip_special_tokens=True)))
    rng.shuffle(prompts)
    return prompts


# -- load -------------------------------------------------------------------------------------------


@dataclass
class Completed:
    started: float
    first_token: float
    finished: float
    tokens: int
    # When the answer's tokens reached the client: (time, tokens so far) per response received.
    arrivals: tuple[tuple[float, int], ...] = ()


def tokens_inside(completed: Completed, start: float, end: float) -> int:
    """The answer's tokens that reached the client between `start` and `end` (all of them at `finished`
    where it was not streamed)."""
    arrivals = completed.arrivals or ((completed.finished, completed.tokens),)
    before = 0
    inside = 0
    for arrived, so_far in arrivals:
        if start <= arrived <= end:
            inside += so_far - before
        before = so_far
    return inside


def closed_loop(
    request: Callable[[Any, str], Completed],
    make_client: Callable[[], Any],
    close_client: Callable[[Any], None],
    prompts: Sequence[str],
    clients: int,
    warmup_s: float,
    window_s: float,
) -> dict[str, Any]:
    begin = time.perf_counter()
    window_start, window_end = begin + warmup_s, begin + warmup_s + window_s
    done: list[Completed] = []
    errors: list[str] = []
    lock = threading.Lock()
    cursor = iter(range(10**9))

    def client_loop() -> None:
        client = make_client()
        try:
            while time.perf_counter() < window_end:
                with lock:
                    prompt = prompts[next(cursor) % len(prompts)]
                try:
                    completed = request(client, prompt)
                except Exception as exc:
                    with lock:
                        errors.append(str(exc))
                    continue
                with lock:
                    done.append(completed)
        finally:
            close_client(client)

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=warmup_s + window_s + 600)
    inside = [c for c in done if window_start <= c.finished <= window_end]
    ttft = [(c.first_token - c.started) * 1000 for c in inside]
    every_ttft = [(c.first_token - c.started) * 1000 for c in done]
    latency = [(c.finished - c.started) * 1000 for c in inside]
    return {
        "clients": clients,
        "answers": len(inside),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        # Every token that reached a client inside the window, answers still running at either edge
        # included. Counting whole answers only, many clients that started together finish in waves, and
        # a 15 s window at 64 clients held 3 or 4 of them: 819 or 1,092 tok/s for the same server.
        "tokens_per_s": sum(tokens_inside(c, window_start, window_end) for c in done) / window_s,
        "answers_tokens_per_s": sum(c.tokens for c in inside) / window_s,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "latency_p50_ms": percentile(latency, 50),
        # Over every answer of the level, warm-up included: the requests a server's own counters cover.
        "ttft_mean_all_ms": sum(every_ttft) / len(every_ttft) if every_ttft else None,
        # Streamed answers whose first text came with their last token: a stream holds back text that
        # ends in a partial character, and a random model's answer can be bytes that never form one.
        "text_at_end_answers": sum(
            1 for c in done if c.tokens > 1 and c.arrivals[:1] == ((c.first_token, c.tokens),)
        ),
        "all_answers": len(done),
    }


def _grpc_client(url: str) -> Any:
    import tritonclient.grpc as grpcclient

    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: results.put(error or result))
    return client, results


def ours_request(
    max_tokens: int | Mapping[str, int], streamed: bool = True
) -> Callable[[Any, str], Completed]:
    """One request to ours over the gRPC stream, for `max_tokens` tokens (or the prompt's own number); not
    `streamed`, the answer comes as one response (the decoupled model's only one), and its first token
    arrives with it, as the baseline's does."""
    import tritonclient.grpc as grpcclient

    def request(handle: Any, prompt: str) -> Completed:
        client, results = handle
        text = grpcclient.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
        stream = grpcclient.InferInput("stream", [1], "BOOL")
        stream.set_data_from_numpy(np.array([streamed]))
        tokens = grpcclient.InferInput("max_tokens", [1], "INT32")
        limit = max_tokens if isinstance(max_tokens, int) else max_tokens[prompt]
        tokens.set_data_from_numpy(np.array([limit], dtype=np.int32))
        temperature = grpcclient.InferInput("temperature", [1], "FP32")
        temperature.set_data_from_numpy(np.array([0.0], dtype=np.float32))
        started = time.perf_counter()
        client.async_stream_infer(
            "model", [text, stream, tokens, temperature], enable_empty_final_response=True
        )
        first = None
        generated = 0
        arrivals: list[tuple[float, int]] = []
        while True:
            item = results.get(timeout=600)
            if isinstance(item, Exception):
                raise item
            if item.as_numpy("num_output_tokens") is not None:
                arrived = time.perf_counter()
                first = first or arrived
                generated = int(item.as_numpy("num_output_tokens")[0])
                arrivals.append((arrived, generated))
            if item.get_response().parameters["triton_final_response"].bool_param:
                finished = time.perf_counter()
                return Completed(started, first or finished, finished, generated, tuple(arrivals))

    return request


def baseline_request(max_tokens: int) -> Callable[[Any, str], Completed]:
    import tritonclient.grpc as grpcclient

    def request(client: Any, prompt: str) -> Completed:
        text = grpcclient.InferInput("prompt", [1], "BYTES")
        text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
        started = time.perf_counter()
        client.infer("baseline", [text])
        finished = time.perf_counter()
        # No streaming: the first token arrives with the whole answer (no EOS, so max_tokens tokens).
        return Completed(started, finished, finished, max_tokens)

    return request


@contextlib.contextmanager
def serve(repository: Path, log: Path, environment: dict[str, str] | None = None) -> Iterator[Any]:
    from model_repo.triton import TritonServer
    from model_repo.triton_args import repository_server_args

    args = [
        "--strict-readiness=true",
        "--log-verbose=0",
        *repository_server_args(),
        f"--model-repository={repository}",
    ]
    with TritonServer(
        None, extra_args=args, ready_timeout_s=600, log_path=log, environment=environment
    ) as server:
        yield server


def _close_stream(handle: Any) -> None:
    handle[0].stop_stream()
    handle[0].close()


def build_ours(checkpoint: Path, settings: Settings, sequences: int | None = None) -> Path:
    """Ours' repository for the checkpoint (the python format; `sequences` decoded together, by default
    as many as the most clients)."""
    from model_repo.build import build_repository
    from model_repo.options import BuildOptions, ModelFormat

    options = BuildOptions(
        source=f"file://{checkpoint}",
        model_name="model",
        max_concurrent_sequences=sequences or max(settings.concurrency),
        device="gpu" if settings.device == "cuda" else "cpu",
        format=ModelFormat.PYTHON,  # on a GPU `auto` would pick vLLM, which this benchmark does not carry
    )
    return build_repository(options, settings.workdir / "ours-repository").path


def serve_ours(repository: Path, settings: Settings) -> contextlib.AbstractContextManager[Any]:
    """Ours served with its CPU wait policy, logging to the workdir's ours-triton.log."""
    environment = cpu_wait_environment(CpuWaitPolicy(settings.cpu_wait_policy))
    return serve(repository, settings.workdir / "ours-triton.log", environment)


def ours_level(
    server: Any,
    settings: Settings,
    clients: int,
    inputs: Sequence[str],
    streamed: bool = True,
    answer_tokens: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """One closed-loop level of ours served by `server` (each answer `answer_tokens[prompt]` tokens long
    where given, else max_tokens), with the runtime's own time to first token."""
    before = scrape(server.metrics_url, "model")
    level = closed_loop(
        ours_request(settings.max_tokens if answer_tokens is None else answer_tokens, streamed),
        lambda: _grpc_client(server.grpc_url),
        _close_stream,
        inputs,
        clients,
        settings.warmup_s,
        settings.window_s,
    )
    # The runtime's mean from arrival to first token over the same answers: the rest of the client's
    # mean is the way in and out (gRPC, Triton, the stub's messages, the client).
    after = scrape(server.metrics_url, "model")
    level["server_ttft_mean_ms"] = histogram_mean_ms(before, after, GENERATION_TTFT)
    # Its two parts: arrival to the prompt's prefill (the engine busy with others), and the prefill.
    level["server_queue_mean_ms"] = histogram_mean_ms(before, after, GENERATION_QUEUE)
    level["server_prefill_mean_ms"] = histogram_mean_ms(before, after, GENERATION_PREFILL)
    return level


def measure_ours(checkpoint: Path, settings: Settings, prompts: Sequence[str]) -> dict[str, Any]:
    repository = build_ours(checkpoint, settings)
    levels = []
    whole: list[dict[str, Any]] = []
    shared: list[dict[str, Any]] = []
    with serve_ours(repository, settings) as server:
        level_of = partial(ours_level, server, settings)
        for clients in settings.concurrency:
            level = guarded_level(settings, partial(level_of, clients, prompts), f"ours at {clients}")
            print(f"ours        {clients:>3} clients: {json.dumps(level)}", flush=True)
            levels.append(level)
        for clients in [c for c in settings.concurrency if c in settings.whole_answers]:
            level = guarded_level(
                settings, partial(level_of, clients, prompts, False), f"ours whole answers at {clients}"
            )
            print(f"ours whole  {clients:>3} clients: {json.dumps(level)}", flush=True)
            whole.append(level)
        if settings.shared_prefix:
            with_prefix, unique = prefixed_prompts(checkpoint, settings, prompts)
            lengths = answer_tokens(settings, with_prefix, unique)
            for clients in [c for c in settings.concurrency if c <= 16]:
                pair: dict[str, Any] = {"clients": clients}
                for key, inputs in (("unique", unique), ("shared", with_prefix)):
                    pair[key] = guarded_level(
                        settings,
                        partial(level_of, clients, inputs, True, lengths),
                        f"ours {key} prefix at {clients}",
                    )
                print(f"ours shared prefix {clients:>3} clients: {json.dumps(pair)}", flush=True)
                shared.append(pair)
    config = (repository / "model" / "config.pbtxt").read_text()
    log = (settings.workdir / "ours-triton.log").read_text(errors="replace")
    # The runtime logs where its engine thread's time went every 30 s of work (generation.py).
    profile = [line.split("] ", 1)[-1] for line in log.splitlines() if "generation engine profile" in line]
    return {
        "levels": levels,
        "whole_answer_levels": whole,
        "shared_prefix": shared,
        "config_pbtxt": config,
        "engine_profile": profile,
    }


def guarded_level(settings: Settings, measure: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
    """One level, repeated while other processes used more than the allowed CPU share; the level records
    the share it ran with, and is marked disturbed above the policy's limit."""
    level, record = guarded(settings.quiet, measure, what)
    level["foreign_cpu_share"] = record["foreign_share"]
    level["attempts"] = record["attempts"]
    return level


def prefixed_prompts(
    checkpoint: Path, settings: Settings, prompts: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The workload's prompts after one shared prefix of `shared_prefix` tokens (a system prompt), and the
    same prompts after a different text of that length each (nothing to reuse)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    words = " ".join(load_texts()).split()

    def filler(start: int) -> str:
        ids = tokenizer(" ".join(words[start : start + 2 * settings.shared_prefix]))["input_ids"]
        return str(tokenizer.decode(ids[: settings.shared_prefix], skip_special_tokens=True))

    system = filler(0)
    step = max(1, (len(words) - 2 * settings.shared_prefix) // max(1, len(prompts)))
    shared = [f"{system} {prompt}" for prompt in prompts]
    unique = [f"{filler(1 + index * step)} {prompt}" for index, prompt in enumerate(prompts)]
    return shared, unique


def write_baseline(checkpoint: Path, settings: Settings) -> tuple[Path, str]:
    """The per-request baseline's repository and its config.pbtxt."""
    repository = settings.workdir / "baseline-repository"
    shutil.rmtree(repository, ignore_errors=True)
    (repository / "baseline" / "1").mkdir(parents=True)
    shutil.copyfile(BASELINE_DIR / "model.py", repository / "baseline" / "1" / "model.py")
    template = (BASELINE_DIR / "config.pbtxt.template").read_text()
    config = template.replace("MODEL_TAG", str(checkpoint)).replace(
        "MAX_NEW_TOKENS_TAG", str(settings.max_tokens)
    )
    (repository / "baseline" / "config.pbtxt").write_text(config)
    return repository, config


def baseline_loop(
    server: Any, settings: Settings, prompts: Sequence[str], clients: int
) -> Callable[[], dict[str, Any]]:
    """One closed-loop level of the baseline served by `server`."""
    import tritonclient.grpc as grpcclient

    return partial(
        closed_loop,
        baseline_request(settings.max_tokens),
        lambda: grpcclient.InferenceServerClient(server.grpc_url),
        lambda client: client.close(),
        prompts,
        clients,
        settings.warmup_s,
        settings.window_s,
    )


def measure_baseline(checkpoint: Path, settings: Settings, prompts: Sequence[str]) -> dict[str, Any]:
    repository, config = write_baseline(checkpoint, settings)
    levels = []
    with serve(repository, settings.workdir / "baseline-triton.log") as server:
        for clients in settings.concurrency:
            measure = baseline_loop(server, settings, prompts, clients)
            level = guarded_level(settings, measure, f"baseline at {clients}")
            print(f"baseline    {clients:>3} clients: {json.dumps(level)}", flush=True)
            levels.append(level)
    return {"levels": levels, "config_pbtxt": config}


def measure_in_process(checkpoint: Path, settings: Settings, prompts: Sequence[str]) -> dict[str, Any]:
    """The same prompts, `clients` at a time, with no server: the better of (1) transformers'
    continuous-batching manager, started and warmed once, with all prompts added at once (what
    `generate_batch` does, without its per-call start-up), and (2) one static left-padded `generate` batch.
    Best of two runs each."""
    import os

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    tokenizer.pad_token = tokenizer.bos_token
    tokenizer.padding_side = "left"
    cuda = settings.device == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=dtype)
    model = model.to(settings.device).eval()
    context = int(model.config.max_position_embeddings)
    generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=settings.max_tokens, do_sample=False
    )
    levels = []
    for clients in settings.concurrency:
        batch = list(prompts[:clients])
        inputs = [tokenizer(p)["input_ids"] for p in batch]
        config = ContinuousBatchingConfig(
            page_size=32,
            num_blocks=clients * (-(-context // 32) + 1),
            max_batch_tokens=context + clients,
            max_requests_per_batch=clients,
            allow_block_sharing=False,
        )
        manager = model.init_continuous_batching(
            generation_config=generation_config, continuous_batching_config=config
        )
        manager.start()
        cb_best, cb_tokens = float("inf"), 0
        try:
            for _ in range(3):  # the first run warms up
                started = time.perf_counter()
                pending = set(manager.add_requests(inputs, max_new_tokens=settings.max_tokens))
                tokens = 0
                while pending:
                    result = manager.get_result(timeout=1)
                    if result is not None and result.is_finished() and result.request_id in pending:
                        pending.discard(result.request_id)
                        tokens += len(result.generated_tokens)
                cb_best, cb_tokens = min(cb_best, time.perf_counter() - started), tokens
        finally:
            manager.stop(block=True, timeout=30)
        static_best, static_tokens = float("inf"), 0
        encoded = tokenizer(batch, return_tensors="pt", padding=True).to(settings.device)
        for _ in range(2):
            started = time.perf_counter()
            with torch.inference_mode():
                output = model.generate(
                    **encoded, generation_config=generation_config, pad_token_id=tokenizer.pad_token_id
                )
            static_best = min(static_best, time.perf_counter() - started)
            static_tokens = int((output.shape[1] - encoded["input_ids"].shape[1]) * clients)
        level = {
            "clients": clients,
            "continuous_tokens_per_s": cb_tokens / cb_best,
            "static_tokens_per_s": static_tokens / static_best,
        }
        level["tokens_per_s"] = max(level["continuous_tokens_per_s"], level["static_tokens_per_s"])
        print(f"in-process  {clients:>3} prompts: {json.dumps(level)}", flush=True)
        levels.append(level)
    return {"levels": levels}


# -- report -----------------------------------------------------------------------------------------


def _by_clients(contender: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {level["clients"]: level for level in contender["levels"]}


def _ratio(numerator: float, denominator: float) -> float:
    """NaN when the denominator measured nothing (e.g. no answer completed inside the window)."""
    return numerator / denominator if denominator and denominator == denominator else float("nan")


def ratios(report: dict[str, Any]) -> dict[str, float]:
    ours, base, limit = (_by_clients(report[key]) for key in (OURS, BASELINE, "in_process"))
    out: dict[str, float] = {}
    for clients in ours:
        out[f"ours/baseline tokens/s at {clients}"] = _ratio(
            ours[clients]["tokens_per_s"], base[clients]["tokens_per_s"]
        )
        out[f"ours/in-process tokens/s at {clients}"] = _ratio(
            ours[clients]["tokens_per_s"], limit[clients]["tokens_per_s"]
        )
    for level in report[OURS].get("whole_answer_levels", []):
        clients = level["clients"]
        out[f"ours whole answers/baseline tokens/s at {clients}"] = _ratio(
            level["tokens_per_s"], base[clients]["tokens_per_s"]
        )
    for pair in report[OURS].get("shared_prefix", []):
        out[f"TTFT p50 shared/unique prefix at {pair['clients']}"] = _ratio(
            pair["shared"]["ttft_p50_ms"], pair["unique"]["ttft_p50_ms"]
        )
    first = min(ours)
    out[f"ours/baseline TTFT p50 at {first}"] = _ratio(ours[first]["ttft_p50_ms"], base[first]["ttft_p50_ms"])
    out[f"ours/baseline latency p50 at {first}"] = _ratio(
        ours[first]["latency_p50_ms"], base[first]["latency_p50_ms"]
    )
    return out


def render_markdown(report: dict[str, Any]) -> str:
    ours, base, limit = (_by_clients(report[key]) for key in (OURS, BASELINE, "in_process"))
    rows = []
    for clients in sorted(ours):
        o, b, p = ours[clients], base[clients], limit[clients]
        rows.append(
            [
                str(clients),
                fmt(o["tokens_per_s"]),
                fmt(b["tokens_per_s"]),
                fmt(p["tokens_per_s"]),
                f"{_ratio(o['tokens_per_s'], b['tokens_per_s']):.2f}x",
                f"{_ratio(o['tokens_per_s'], p['tokens_per_s']):.2f}x",
                f"{fmt(o['ttft_p50_ms'])} / {fmt(o['ttft_p99_ms'])}",
                f"{fmt(b['ttft_p50_ms'])} / {fmt(b['ttft_p99_ms'])}",
                f"{o['errors']}/{b['errors']}",
                f"{_share(o)} / {_share(b)}",
            ]
        )
    table = markdown_table(
        [
            "clients",
            "ours tok/s",
            "baseline tok/s",
            "in-process tok/s",
            "ours/baseline",
            "ours/in-process",
            "ours TTFT p50/p99 ms",
            "baseline TTFT p50/p99 ms",
            "errors ours/baseline",
            "other processes' CPU ours/baseline",
        ],
        rows,
    )
    limit = min(DISTURBED_SHARE, report["settings"]["quiet"]["max_foreign_share"])
    disturbed = [
        f"{key} at {level['clients']}"
        for key in (OURS, BASELINE)
        for level in report[key]["levels"]
        if level.get("foreign_cpu_share", 0) > limit
    ]
    s = report["settings"]
    lines = [
        f"Model: random-weight Llama, {s['layers']} layers, hidden {s['hidden']}, GQA; prompts "
        f"{s['min_prompt']}-{s['max_prompt']} tokens, {s['max_tokens']}-token answers (no EOS), greedy. "
        f"Closed loop, {s['warmup_s']:.0f} s warm-up + {s['window_s']:.0f} s window per level; tokens/s "
        "counts the tokens that reached the clients inside the window.",
        "",
        table,
        "",
        "In-process: the better of transformers' continuous-batching manager (started once, all prompts "
        "at once) and one static left-padded `generate` batch; per level: "
        + ", ".join(
            f"{lv['clients']}: {fmt(lv['continuous_tokens_per_s'])} / {fmt(lv['static_tokens_per_s'])} tok/s"
            for lv in report["in_process"]["levels"]
        )
        + ". The baseline does not stream: its first token arrives with its whole answer.",
        "",
        *_whole_answer_lines(report),
        *_shared_prefix_lines(report),
        *_first_token_split_lines(report),
        *_own_cpu_lines(report),
        *(
            ["Where the engine thread's time went (the runtime's log, one line per 30 s of work):", ""]
            + [f"- {line}" for line in report[OURS].get("engine_profile", [])]
            + [""]
            if report[OURS].get("engine_profile")
            else []
        ),
        (
            f"DISTURBED (other processes used more than {limit:.0%} of the CPU after the retries): "
            + ", ".join(disturbed)
            if disturbed
            else f"Every level ran with other processes under {limit:.0%} of the CPU."
        ),
        "",
        "Ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in report["ratios"].items()),
        "",
        f"Machine: {machine_line(report['machine'])}. Command: `{report['command']}`.",
    ]
    return "\n".join(lines)


def _own_cpu_lines(report: dict[str, Any]) -> list[str]:
    """Cores each of ours' processes kept busy per level (the kept attempt): on a small machine the
    client's and the server's own threads take CPU the model would otherwise have."""
    lines = []
    for level in report[OURS]["levels"]:
        attempts = level.get("attempts") or []
        kept: dict[str, Any] = min(attempts, key=lambda a: a.get("foreign_share", 0), default={})
        cores = kept.get("own_cores_by_role")
        if cores:
            split = ", ".join(f"{role} {value:.2f}" for role, value in cores.items() if value >= 0.005)
            lines.append(f"- {level['clients']} clients: {split}")
    if not lines:
        return []
    return [
        "Cores ours' processes kept busy (warm-up and window; the client is this benchmark's process):",
        "",
        *lines,
        "",
    ]


def _share(level: dict[str, Any]) -> str:
    share = level.get("foreign_cpu_share")
    return "-" if share is None else f"{share:.0%}"


def _whole_answer_lines(report: dict[str, Any]) -> list[str]:
    """Ours without streaming (each answer one response, as the baseline answers) beside the baseline."""
    levels = report[OURS].get("whole_answer_levels", [])
    if not levels:
        return []
    ours, base = _by_clients(report[OURS]), _by_clients(report[BASELINE])
    rows = [
        [
            str(level["clients"]),
            fmt(level["tokens_per_s"]),
            fmt(ours[level["clients"]]["tokens_per_s"]),
            fmt(base[level["clients"]]["tokens_per_s"]),
            f"{_ratio(level['tokens_per_s'], base[level['clients']]['tokens_per_s']):.2f}x",
            f"{fmt(level['latency_p50_ms'])} / {fmt(base[level['clients']]['latency_p50_ms'])}",
            _share(level),
        ]
        for level in levels
    ]
    header = [
        "clients",
        "ours whole answers tok/s",
        "ours streamed tok/s",
        "baseline tok/s",
        "whole answers/baseline",
        "answer latency p50 ms, ours whole / baseline",
        "other processes' CPU",
    ]
    return [
        "Ours without streaming (`stream` false: each answer one response, as the baseline answers), on the "
        "same server right after the streamed levels:",
        "",
        markdown_table(header, rows),
        "",
    ]


def _first_token_split_lines(report: dict[str, Any]) -> list[str]:
    """Ours' mean time to first token as its client saw it and as the runtime counted it (arrival in the
    model to the first token chosen), over every answer of each streamed level."""
    ours = report[OURS]
    measured: list[tuple[str, dict[str, Any]]] = [("standard", level) for level in ours["levels"]]
    for pair in ours.get("shared_prefix", []):
        measured += [("unique prefixes", pair["unique"]), ("shared prefix", pair["shared"])]
    rows = [
        [
            workload,
            str(level["clients"]),
            fmt(level["ttft_mean_all_ms"]),
            fmt(level["server_ttft_mean_ms"]),
            fmt(level.get("server_queue_mean_ms", math.nan)),
            fmt(level.get("server_prefill_mean_ms", math.nan)),
            fmt(level["ttft_mean_all_ms"] - level["server_ttft_mean_ms"]),
            f"{level['text_at_end_answers']} of {level['all_answers']}",
        ]
        for workload, level in measured
        if level.get("ttft_mean_all_ms") is not None
        and math.isfinite(level.get("server_ttft_mean_ms", math.nan))
    ]
    if not rows:
        return []
    header = [
        "workload",
        "clients",
        "client ms",
        "runtime ms",
        "of which queued ms",
        "of which prefill ms",
        "the rest ms",
        "answers with text only at the end",
    ]
    return [
        "Ours' time to first token, mean over every answer of a level (warm-up included): as the client "
        "saw it, as the runtime counted it (arrival in the model to the first token chosen; of that, the "
        "wait before the prompt's prefill began, for tokenising, the step running and prompts prefilled "
        "before it, and the prefill forward, shared by the prompts prefilled with it), and the rest "
        "(gRPC, Triton, the stub's messages, the response's way back, the client). The rest also holds "
        "the answers whose first text came with their last token: a stream holds back text ending in a "
        "partial character, and this random model's answer is sometimes bytes that never form one.",
        "",
        markdown_table(header, rows),
        "",
    ]


def _shared_prefix_lines(report: dict[str, Any]) -> list[str]:
    pairs = report[OURS].get("shared_prefix", [])
    if not pairs:
        return []
    rows = [
        [
            str(pair["clients"]),
            fmt(pair["unique"]["ttft_p50_ms"]),
            fmt(pair["shared"]["ttft_p50_ms"]),
            f"{_ratio(pair['shared']['ttft_p50_ms'], pair['unique']['ttft_p50_ms']):.2f}x",
            fmt(pair["unique"]["tokens_per_s"]),
            fmt(pair["shared"]["tokens_per_s"]),
            f"{_share(pair['unique'])} / {_share(pair['shared'])}",
        ]
        for pair in pairs
    ]
    header = [
        "clients",
        "TTFT p50 ms, unique prefixes",
        "TTFT p50 ms, shared prefix",
        "shared/unique",
        "tok/s unique",
        "tok/s shared",
        "other processes' CPU",
    ]
    tokens = report["settings"]["shared_prefix"]
    spread = report["settings"].get("spread_answer_tokens")
    answers = (
        f" Answers of {spread[0]}-{spread[1]} tokens, one length per prompt, the same in both workloads."
        if spread
        else ""
    )
    return [
        f"Shared-prefix workload (ours only): each prompt after one {tokens}-token "
        "prefix (prefix-cache hits) against the same prompts after a different text of that length each."
        + answers,
        "",
        markdown_table(header, rows),
        "",
    ]


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for key, label in (
        (OURS, "ours (continuous batching)"),
        (BASELINE, "per-request baseline"),
        ("in_process", "in-process generate_batch"),
    ):
        levels = report[key]["levels"]
        axis.plot(
            [lv["clients"] for lv in levels], [lv["tokens_per_s"] for lv in levels], marker="o", label=label
        )
    axis.set_xscale("log", base=2)
    axis.set_xlabel("concurrent clients (prompts for in-process)")
    axis.set_ylabel("generated tokens/s")
    axis.set_title("bench/generation")
    axis.legend()
    axis.grid(alpha=0.3)
    save_figure(figure, path)
    plt.close(figure)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    settings = parse_args(argv)
    settings.workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = make_checkpoint(settings, settings.workdir / "checkpoint")
    prompts = make_prompts(checkpoint, settings)
    report = report_head("bench.generation", argv, settings)
    report["in_process"] = measure_in_process(checkpoint, settings, prompts)
    report[OURS] = measure_ours(checkpoint, settings, prompts)
    report[BASELINE] = measure_baseline(checkpoint, settings, prompts)
    report["ratios"] = ratios(report)
    print(render_markdown(report))
    if settings.write:
        plot(report, RESULTS_DIR / f"{settings.name}.png")
        write_results(settings.name, report, render_markdown(report))
    return report
