"""bench/generation/profile: where a generated token's time goes, in-process (no server).

The same random-weight Llama and prompts as `bench.generation`; greedy, `--max-tokens` tokens per prompt.
Side by side, interleaved (A B A B ...; the best of `--repeats` runs each, so a busy moment on a shared
machine costs one run, not the comparison):

- `generate`: transformers' `generate` on one prompt, and one static left-padded batch of N prompts;
- `engine`: the runtime's decoding loop (model_repo/runtime/decoding.py) on the same prompts: prefill each
  prompt alone, join the running batch, decode until every row has its tokens; its time split into the
  model's forward passes and everything else (token choice, joins, leaves, mask upkeep);
- `engine, staggered`: the N prompts join one decoding step apart, as arrivals do in a server;
- detokenisation: the per-token cost of decoding a growing answer to text (what streaming pays).

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


def _engine(model: Any, prompt_ids: list[list[int]], tokens: int, stagger: bool) -> dict[str, float]:
    """Seconds of one engine run: total, in the model's forward passes, and tokens generated."""
    import torch

    from model_repo.runtime import decoding

    class Job:
        def __init__(self, ids: list[int]) -> None:
            self.row = decoding.Row(decoding.Sampling("p", temperature=0.0), ids, frozenset())

    forward_s = 0.0
    original = model.forward

    def timed_forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal forward_s
        began = time.perf_counter()
        output = original(*args, **kwargs)
        forward_s += time.perf_counter() - began
        return output

    model.forward = timed_forward
    try:
        began = time.perf_counter()
        batch = decoding.RunningBatch(model)
        waiting = [Job(ids) for ids in prompt_ids]
        generated = 0
        with torch.inference_mode():
            while waiting or len(batch):
                for job in waiting[: 1 if stagger else len(waiting)]:
                    logits, tensors, _ = decoding.prefill(model, job.row.prompt_ids, None)
                    choice = decoding.choose(logits, job.row)
                    job.row.add(choice.token)
                    batch.join(job, tensors, choice.token)
                    generated += 1
                waiting = waiting[1 if stagger else len(waiting) :]
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

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    checkpoint = make_checkpoint(settings, settings.workdir / "checkpoint")
    prompts = make_prompts(checkpoint, settings)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    tokenizer.pad_token = tokenizer.bos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
    tokens = settings.max_tokens
    levels = []
    for size in sizes:
        batch = list(prompts[:size])
        ids = [tokenizer(p)["input_ids"] for p in batch]
        contenders: dict[str, Callable[[], dict[str, float]]] = {
            "generate": partial(_generate, model, tokenizer, batch, tokens),
            "engine": partial(_engine, model, ids, tokens, stagger=False),
        }
        if size > 1:
            contenders["engine, staggered"] = partial(_engine, model, ids, tokens, stagger=True)
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
            level[name] = {
                "tokens_per_s": best["tokens"] / best["seconds"],
                "ms_per_step": 1000 * best["seconds"] / tokens,
                "forward_share": best.get("forward_s", float("nan")) / best["seconds"],
            }
        level["engine/generate"] = level["engine"]["tokens_per_s"] / level["generate"]["tokens_per_s"]
        print(json.dumps(level), flush=True)
        levels.append(level)
    answer = tokenizer(prompts[0])["input_ids"][:tokens]
    began = time.perf_counter()
    for end in range(1, len(answer) + 1):
        tokenizer.decode(answer[:end], skip_special_tokens=True)
    detokenise_us = 1e6 * (time.perf_counter() - began) / len(answer)
    return {"levels": levels, "detokenise_us_per_token": detokenise_us}


def render_markdown(report: dict[str, Any]) -> str:
    rows = []
    for level in report["levels"]:
        staggered = level.get("engine, staggered")
        rows.append(
            [
                str(level["prompts"]),
                fmt(level["generate"]["tokens_per_s"]),
                fmt(level["engine"]["tokens_per_s"]),
                fmt(staggered["tokens_per_s"]) if staggered else "-",
                f"{level['engine/generate']:.2f}x",
                f"{level['engine']['forward_share']:.0%}",
                f"{level['foreign_cpu_share']:.0%}",
            ]
        )
    table = markdown_table(
        [
            "prompts",
            "generate tok/s",
            "engine tok/s",
            "engine staggered tok/s",
            "engine/generate",
            "engine time in forward",
            "other processes' CPU",
        ],
        rows,
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
