"""The prefix cache's lookup, in-process: how long `decoding.PrefixCache.lookup` takes on the engine's thread
for a prompt after a shared system prompt (a hit) and for an unrelated one (a miss), with the cache filled
as a stream of such prompts fills it.

    .venv/bin/python -m bench.generation.lookup_probe [--prefixes 200,1000] [--budget-per-prefix 40]

The budget is 4 x the context by default in the runtime; each row fills a budget of `--budget-per-prefix`
x the prefix tokens with prompts of the prefix and 16-300 tokens of their own.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

VOCABULARY = 32000


def measure(prefix_tokens: int, budget: int, lookups: int = 200, seed: int = 0) -> dict[str, Any]:
    """Milliseconds a lookup, hit and miss, on a cache of `budget` tokens filled behind one prefix."""
    from model_repo.runtime.decoding import PrefixCache

    draw = random.Random(seed)

    def tokens(count: int) -> list[int]:
        return [draw.randrange(1, VOCABULARY) for _ in range(count)]

    prefix = tokens(prefix_tokens)
    cache = PrefixCache(budget)
    for _ in range(max(1, budget // prefix_tokens) * 2):
        cache.store(prefix + tokens(draw.randrange(16, 300)), [])
    hits = [prefix + tokens(136) for _ in range(lookups)]
    misses = [tokens(prefix_tokens + 136) for _ in range(lookups)]
    result: dict[str, Any] = {"prefix": prefix_tokens, "entries": len(cache.entries)}
    for name, prompts in (("hit", hits), ("miss", misses)):
        began = time.perf_counter()
        for prompt in prompts:
            cache.lookup(prompt)
        result[f"{name}_ms"] = (time.perf_counter() - began) / lookups * 1e3
    return result


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prefixes", default="200,1000", help="shared prefix lengths, comma-separated")
    parser.add_argument("--budget-per-prefix", type=int, default=40)
    parser.add_argument("--lookups", type=int, default=200)
    args = parser.parse_args(argv)
    results = []
    for prefix in (int(part) for part in args.prefixes.split(",")):
        result = measure(prefix, prefix * args.budget_per_prefix, args.lookups)
        print(
            f"prefix {result['prefix']} tokens, {result['entries']} entries: "
            f"hit {result['hit_ms']:.3f} ms, miss {result['miss_ms']:.3f} ms a lookup"
        )
        results.append(result)
    return results


if __name__ == "__main__":
    main()
