"""A decoding step through the model's own forward against decode_step.py's, in-process, on
`bench.generation`'s random Llama (4 layers, hidden 512): the runtime's running batch
(`decoding.RunningBatch`) with N prompts of the benchmark's lengths joined (padded rows, so the masked
path runs from 2 rows), then `--steps` decoding steps each way, interleaved round by round.

    .venv/bin/python -m bench.generation.step_probe [--sizes 1,4,16,64] [--rounds 5] [--steps 48]

Prints, per batch size, the median and range of the milliseconds per step each way, their ratio, and the
largest difference between the two ways' logits (relative to their largest magnitude).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _steps(model: Any, own: Any, prompts: list[list[int]], steps: int) -> tuple[float, Any]:
    """(seconds per step, the last step's logits) of `steps` greedy steps for these prompts joined."""
    import torch

    from model_repo.runtime import decoding

    batch = decoding.RunningBatch(model, own)
    joining = []
    for prompt in prompts:
        logits, tensors, _ = decoding.prefill(model, prompt, None)
        joining.append((None, tensors, int(logits.argmax())))
    batch.join_many(joining)
    began = time.perf_counter()
    for _ in range(steps):
        logits = batch.step()
        batch.pending = logits.argmax(dim=-1).tolist()
    seconds = (time.perf_counter() - began) / steps
    return seconds, torch.as_tensor(logits)


def compare(
    model: Any, own: Any, prompt_ids: list[list[int]], size: int, rounds: int, steps: int
) -> dict[str, Any]:
    """One batch size: each way's milliseconds a step (every round's, interleaved) and the largest
    difference between the two ways' logits, relative to their largest magnitude."""
    prompts = prompt_ids[:size]
    times: dict[str, list[float]] = {"model": [], "own": []}
    difference = 0.0
    _steps(model, own, prompts, 4)  # warm-up
    _steps(model, None, prompts, 4)
    for round_ in range(rounds):
        order = [("model", None), ("own", own)]
        logits = {}
        for name, step in order if round_ % 2 == 0 else reversed(order):
            seconds, logits[name] = _steps(model, step, prompts, steps)
            times[name].append(seconds * 1e3)
        theirs = logits["model"]
        scale = float(theirs.abs().max()) or 1.0
        difference = max(difference, float((logits["own"] - theirs).abs().max()) / scale)
    return {"rows": size, "ms": times, "difference": difference}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,4,16,64")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.generation.run import make_checkpoint, make_prompts, parse_args
    from model_repo.runtime.decode_step import DecodeStep

    shape = ["--layers", str(args.layers), "--hidden", str(args.hidden), "--min-prompt", "16"]
    settings = parse_args([*shape, "--max-prompt", "256"])
    with tempfile.TemporaryDirectory(prefix="step-probe-") as directory:
        checkpoint = make_checkpoint(settings, Path(directory))
        model: Any = AutoModelForCausalLM.from_pretrained(checkpoint)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        prompt_ids = [tokenizer(text)["input_ids"] for text in make_prompts(checkpoint, settings)]
    own, why = DecodeStep.attach(model)
    if own is None:
        raise SystemExit(why)
    print(f"{why}; {torch.get_num_threads()} torch threads")
    found = []
    with torch.inference_mode():
        for size in (int(part) for part in args.sizes.split(",")):
            result = compare(model, own, prompt_ids, size, args.rounds, args.steps)
            medians = {name: statistics.median(values) for name, values in result["ms"].items()}
            spans = {name: f"{min(values):.2f}-{max(values):.2f}" for name, values in result["ms"].items()}
            print(
                f"{size:>3} rows: the model's forward {medians['model']:.2f} ms a step ({spans['model']}), "
                f"its own {medians['own']:.2f} ({spans['own']}); own/model's time "
                f"{medians['own'] / medians['model']:.2f}; logits within {result['difference']:.3g}"
            )
            found.append(result)
    return found


if __name__ == "__main__":
    main()
