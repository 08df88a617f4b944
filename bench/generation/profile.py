"""bench/generation/profile: where a generated token's time goes, in-process (no server).

The same random-weight Llama and prompts as `bench.generation`; greedy, `--max-tokens` tokens per prompt.
Side by side, interleaved (A B A B ...; the best of `--repeats` runs each, so a busy moment on a shared
machine costs one run, not the comparison):

- `generate`: transformers' `generate` on one prompt, and one static left-padded batch of N prompts;
- `engine`: the runtime's decoding loop (model_repo/runtime/decoding.py) on the same prompts: prefill the
  waiting prompts in groups (one left-padded forward per token budget, as the server's engine does), join
  the running batch, decode until every row has its tokens; its time split into the model's forward
  passes and everything else (token choice, joins, leaves, mask upkeep);
- `engine, one at a time`: the same loop prefilling each prompt alone (one forward per prompt, how the
  engine prefilled before grouping), so what grouping gains is measured in the same interleaved run;
- `engine, staggered`: the N prompts join one decoding step apart, as arrivals do in a server;
- first tokens: the prefill alone (every prompt's first token, its rows joined), `generate` with one new
  token against the engine's grouped and one-at-a-time prefill;
- detokenisation: the per-token cost of turning a growing answer into text as the runtime does (what
  streaming pays).

What this cannot show is the serving path's own cost (Triton's response per token, gRPC): that is ours
in `bench.generation` against these in-process figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bench.common.machine import ForeignCpu, machine_line
from bench.common.report import fmt, markdown_table, write_results
from bench.generation.run import (
    NEVER_WAIT,
    Settings,
    add_model_arguments,
    make_checkpoint,
    make_prompts,
    model_fields,
    report_head,
)
from bench.generation.text_probe import incremental
from model_repo.triton_args import DEFAULT_CPU_WAIT_POLICY


class _Job:
    """What the running batch holds per row (the server's jobs carry their `Row` the same way)."""

    def __init__(self, ids: list[int]) -> None:
        from model_repo.runtime import decoding

        self.row = decoding.Row(decoding.Sampling("p", temperature=0.0), ids, frozenset())


def _prefill_arrivals(model: Any, batch: Any, arrived: list[_Job], token_budget: int | None) -> int:
    """As the server's engine takes new work: the arrived prompts prefilled in groups (each alone when the
    budget is 0), each row's first token chosen, the rows joined; returns the tokens generated."""
    from model_repo.runtime import decoding

    prompts = [job.row.prompt_ids for job in arrived]
    budget = decoding.PREFILL_TOKEN_BUDGET if token_budget is None else token_budget
    for group in decoding.plan_prefill(model, prompts, None, token_budget=budget):
        members = [arrived[index] for index in group.indices]
        logits, tensors = decoding.prefill_group(model, group, None)
        choices = decoding.choose_rows(logits, [job.row for job in members])
        for job, choice in zip(members, choices, strict=True):
            job.row.add(choice.token)
        batch.join_many(
            [(job, rows, c.token) for job, rows, c in zip(members, tensors, choices, strict=True)]
        )
    return len(arrived)


def _first_tokens(model: Any, prompt_ids: list[list[int]], token_budget: int | None) -> dict[str, float]:
    """Seconds until every prompt has its first token and its row in the running batch."""
    import torch

    from model_repo.runtime import decoding

    began = time.perf_counter()
    with torch.inference_mode():
        generated = _prefill_arrivals(
            model, decoding.RunningBatch(model), [_Job(ids) for ids in prompt_ids], token_budget
        )
    return {"seconds": time.perf_counter() - began, "tokens": generated}


def _engine(
    model: Any,
    prompt_ids: list[list[int]],
    tokens: int,
    stagger: bool,
    token_budget: int | None = None,
    own_step: Any = None,
) -> dict[str, float]:
    """Seconds of one engine run: total, in the forward passes (the model's prefills and the decoding
    steps, through `own_step`, decode_step.py's forward, where the runtime uses one), and tokens
    generated."""
    import torch

    from model_repo.runtime import decoding

    forward_s = 0.0

    def timed(forward: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal forward_s
            began = time.perf_counter()
            output = forward(*args, **kwargs)
            forward_s += time.perf_counter() - began
            return output

        return call

    model.forward = timed(model.forward)
    try:
        began = time.perf_counter()
        batch = decoding.RunningBatch(model, None if own_step is None else timed(own_step))
        waiting = [_Job(ids) for ids in prompt_ids]
        generated = 0
        with torch.inference_mode():
            while waiting or len(batch):
                taken = 1 if stagger else len(waiting)
                arrived, waiting = waiting[:taken], waiting[taken:]
                generated += _prefill_arrivals(model, batch, arrived, token_budget)
                logits = batch.step()
                gone = set()
                rows = [job.row for job in batch.rows]
                for index, (job, choice) in enumerate(
                    zip(batch.rows, decoding.choose_rows(logits, rows), strict=True)
                ):
                    job.row.add(choice.token)
                    batch.pending[index] = choice.token
                    generated += 1
                    if len(job.row.generated) >= tokens:
                        gone.add(index)
                batch.leave(gone)
        total = time.perf_counter() - began
    finally:
        del model.forward
    return {"seconds": total, "forward_s": forward_s, "tokens": generated}


def _generate(model: Any, tokenizer: Any, prompts: list[str], tokens: int) -> dict[str, float]:
    import torch

    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    began = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            **encoded,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "tokens": (output.shape[1] - encoded["input_ids"].shape[1]) * len(prompts)}


def _best(runs: list[dict[str, float]]) -> dict[str, float]:
    return min(runs, key=lambda run: run["seconds"])


def measure(settings: Settings, sizes: Sequence[int], repeats: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model_repo.runtime.decode_step import DecodeStep

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    checkpoint = make_checkpoint(settings, settings.workdir / "checkpoint")
    prompts = make_prompts(checkpoint, settings)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    tokenizer.pad_token = tokenizer.bos_token
    tokenizer.padding_side = "left"
    model: Any = AutoModelForCausalLM.from_pretrained(str(checkpoint))
    model.eval()
    own_step, why = DecodeStep.attach(model)  # as the runtime's engine decodes
    print(why, flush=True)
    tokens = settings.max_tokens
    levels = []
    for size in sizes:
        batch = list(prompts[:size])
        ids = [tokenizer(p)["input_ids"] for p in batch]
        contenders: dict[str, Callable[[], dict[str, float]]] = {
            "generate": partial(_generate, model, tokenizer, batch, tokens),
            "engine": partial(_engine, model, ids, tokens, stagger=False, own_step=own_step),
        }
        if size > 1:
            contenders["engine, one at a time"] = partial(_engine, model, ids, tokens, False, 0, own_step)
            contenders["engine, staggered"] = partial(_engine, model, ids, tokens, True, None, own_step)
        first_tokens: dict[str, Callable[[], dict[str, float]]] = {
            "generate": partial(_generate, model, tokenizer, batch, 1),
            "engine": partial(_first_tokens, model, ids, None),
        }
        if size > 1:
            first_tokens["engine, one at a time"] = partial(_first_tokens, model, ids, 0)
        contenders.update({f"first tokens: {name}": run for name, run in first_tokens.items()})
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
        meter = ForeignCpu()
        meter.start()
        for _ in range(repeats + 1):  # the first round warms up and is dropped
            for name, run in contenders.items():
                runs[name].append(run())
        _, foreign_share = meter.stop()
        level: dict[str, Any] = {"prompts": size, "foreign_cpu_share": round(foreign_share, 3)}
        for name, results in runs.items():
            best = _best(results[1:])
            if name.startswith("first tokens: "):
                level[name] = {"ms": 1000 * best["seconds"]}
                continue
            level[name] = {
                "tokens_per_s": best["tokens"] / best["seconds"],
                "ms_per_step": 1000 * best["seconds"] / tokens,
                "forward_share": best.get("forward_s", float("nan")) / best["seconds"],
            }
        for name in ("engine", "engine, one at a time"):
            if name in level:  # a speed ratio: above 1 the engine is faster
                level[f"{name}/generate"] = level[name]["tokens_per_s"] / level["generate"]["tokens_per_s"]
                first = level[f"first tokens: {name}"]["ms"]
                level[f"first tokens: {name}/generate"] = level["first tokens: generate"]["ms"] / first
        print(json.dumps(level), flush=True)
        levels.append(level)
    answer = tokenizer(prompts[0])["input_ids"][:tokens]
    # As the runtime turns a streamed answer into text (runtime/answer_text.py), token by token.
    detokenise_us = 1e6 * incremental(tokenizer, answer)[0] / len(answer)
    return {"levels": levels, "detokenise_us_per_token": detokenise_us}


def render_markdown(report: dict[str, Any]) -> str:
    def ratio(level: dict[str, Any], key: str) -> str:
        return f"{level[key]:.2f}x" if key in level else "-"

    rows, first_rows = [], []
    for level in report["levels"]:
        staggered = level.get("engine, staggered")
        rows.append(
            [
                str(level["prompts"]),
                fmt(level["generate"]["tokens_per_s"]),
                fmt(level["engine"]["tokens_per_s"]),
                fmt(staggered["tokens_per_s"]) if staggered else "-",
                ratio(level, "engine/generate"),
                ratio(level, "engine, one at a time/generate"),
                f"{level['engine']['forward_share']:.0%}",
                f"{level['foreign_cpu_share']:.0%}",
            ]
        )
        one_at_a_time = level.get("first tokens: engine, one at a time")
        first_rows.append(
            [
                str(level["prompts"]),
                f"{level['first tokens: generate']['ms']:.1f}",
                f"{level['first tokens: engine']['ms']:.1f}",
                f"{one_at_a_time['ms']:.1f}" if one_at_a_time else "-",
                ratio(level, "first tokens: engine/generate"),
                ratio(level, "first tokens: engine, one at a time/generate"),
            ]
        )
    table = markdown_table(
        [
            "prompts",
            "generate tok/s",
            "engine tok/s",
            "engine staggered tok/s",
            "engine/generate",
            "one at a time/generate",
            "engine time in forward",
            "other processes' CPU",
        ],
        rows,
    )
    first_table = markdown_table(
        [
            "prompts",
            "generate ms",
            "engine (grouped) ms",
            "engine, one at a time ms",
            "engine/generate",
            "one at a time/generate",
        ],
        first_rows,
    )
    s = report["settings"]
    return "\n".join(
        [
            f"Model: random-weight Llama, {s['layers']} layers, hidden {s['hidden']}; prompts "
            f"{s['min_prompt']}-{s['max_prompt']} tokens, {s['max_tokens']} greedy tokens each; best of "
            f"{report['repeats']} interleaved runs.",
            "",
            table,
            "",
            "Every prompt's first token (the prefill alone; ratios are speeds, above 1 is faster):",
            "",
            first_table,
            "",
            f"Detokenising a growing answer (what each streamed token pays): "
            f"{report['detokenise_us_per_token']:.0f} µs per token.",
            "",
            f"Machine: {machine_line(report['machine'])}. Command: `{report['command']}`.",
        ]
    )


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.generation.profile", description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--sizes", default="1,4,16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/modeldeploy-bench-generation-profile"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings(
        **model_fields(args),
        concurrency=(),
        warmup_s=0,
        window_s=0,
        workdir=args.workdir,
        name="generation-profile-cpu",
        write=not args.no_write,
        device="cpu",
        quiet=NEVER_WAIT,
        shared_prefix=0,
        cpu_wait_policy=DEFAULT_CPU_WAIT_POLICY.value,
        whole_answers=(),
        spread_answer_tokens=None,
    )
    settings.workdir.mkdir(parents=True, exist_ok=True)
    report = {
        **report_head("bench.generation.profile", argv, settings),
        "repeats": args.repeats,
        **measure(settings, [int(size) for size in args.sizes.split(",")], args.repeats),
    }
    print(render_markdown(report))
    if settings.write:
        write_results(settings.name, report, render_markdown(report), readme=False)
    return report


if __name__ == "__main__":
    run()
