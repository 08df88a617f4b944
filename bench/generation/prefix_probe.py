"""Where a prefix-cache hit's time goes, in-process: the runtime's prefill (`decoding.prefill`) of prompts
after one cached 200-token prefix against the same-length prompts after a different prefix each (nothing
to reuse), on `bench.generation`'s random Llama (4 layers, hidden 512), with torch's profiler.

    .venv/bin/python -m bench.generation.prefix_probe [--suffix 136] [--prompts 10] [--ops 8]

Prints the time per prefill of each and the matrix multiplications' share: a hit computes only the new
tokens, so the ratio of the two is the floor for served time to first token with a shared prefix.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prefix", type=int, default=200)
    parser.add_argument("--suffix", type=int, default=136, help="new tokens per prompt (the workload's mean)")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--ops", type=int, default=0, help="print the N costliest operations too")
    args = parser.parse_args()

    import tempfile

    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM

    from bench.generation.run import make_checkpoint, parse_args
    from model_repo.runtime import decoding

    settings = parse_args(["--shared-prefix", str(args.prefix)])  # the benchmark's model, 4 layers x 512
    draw = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="prefix-probe-") as directory:
        model: Any = AutoModelForCausalLM.from_pretrained(make_checkpoint(settings, Path(directory)))
    model.eval()
    vocabulary = int(model.config.vocab_size)

    def tokens(count: int) -> list[int]:
        return [draw.randrange(1, vocabulary) for _ in range(count)]

    prefix = tokens(args.prefix)
    cache = decoding.PrefixCache(4 * 2048)
    with torch.inference_mode():
        decoding.prefill(model, prefix + tokens(args.suffix), cache)  # stores the prefix; warms up
        decoding.prefill(model, tokens(args.prefix + args.suffix), None)
        timings: dict[str, Any] = {}
        conditions: list[tuple[str, Callable[[], list[int]], Any]] = [
            ("hit", lambda: prefix + tokens(args.suffix), cache),
            ("no hit", lambda: tokens(args.prefix + args.suffix), None),
        ]
        for name, prompt_of, prefixes in conditions:
            prompts = [prompt_of() for _ in range(args.prompts)]
            with profile(activities=[ProfilerActivity.CPU]) as profiled:
                began = time.perf_counter()
                for prompt in prompts:
                    decoding.prefill(model, prompt, prefixes)
                seconds = (time.perf_counter() - began) / args.prompts
            mm = sum(e.self_cpu_time_total for e in profiled.key_averages() if e.key == "aten::mm")
            timings[name] = (seconds, mm / 1e6 / args.prompts)
            if args.ops:
                print(f"== {name} ({args.prompts} prefills)")
                print(profiled.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))
    (hit, hit_mm), (cold, cold_mm) = timings["hit"], timings["no hit"]
    print(
        f"prefill of {args.suffix} new tokens after {args.prefix} cached: {hit * 1e3:.1f} ms "
        f"(matrix products {hit_mm * 1e3:.1f} ms); "
        f"all {args.prefix + args.suffix} tokens: {cold * 1e3:.1f} ms "
        f"({cold_mm * 1e3:.1f} ms); hit/no hit {hit / cold:.2f} (tokens computed "
        f"{args.suffix / (args.prefix + args.suffix):.2f}, products {hit_mm / cold_mm:.2f}); "
        f"{torch.get_num_threads()} torch threads"
    )


if __name__ == "__main__":
    main()
