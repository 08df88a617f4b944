"""The text of a streamed answer, in-process: what the engine's thread spends per token turning an answer's
tokens into text, decoding the whole answer again (the runtime before session 20) against decoding a
window of the newest tokens (`runtime.answer_text.AnswerText`), for answers of several lengths.

    .venv/bin/python -m bench.generation.text_probe [--lengths 64,256,1024,4096] [--rounds 3]

The tokenizer is bench.generation's (byte-level BPE, 2,048 tokens, trained on the bench texts); the answers
are those texts' own tokens, so they decode to real words. The two ways alternate within each round, and
both must give the same text.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common.sentences import load_texts


def bench_tokenizer() -> Any:
    """bench.generation's tokenizer (as `run.make_checkpoint` trains it), without the model."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(load_texts()), vocab_size=2048, min_frequency=1, special_tokens=["<s>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>")  # type: ignore[no-untyped-call]


def whole_answer(tokenizer: Any, tokens: list[int]) -> tuple[float, str]:
    """Seconds to decode the whole answer after each token, and the last text."""
    so_far: list[int] = []
    text = ""
    began = time.perf_counter()
    for token in tokens:
        so_far.append(token)
        text = tokenizer.decode(so_far, skip_special_tokens=True)
    return time.perf_counter() - began, text


def incremental(tokenizer: Any, tokens: list[int]) -> tuple[float, str]:
    """Seconds for AnswerText to follow the answer token by token, and its text."""
    from model_repo.runtime.answer_text import AnswerText

    so_far: list[int] = []
    answer = AnswerText(tokenizer)
    began = time.perf_counter()
    for index, token in enumerate(tokens):
        so_far.append(token)
        answer.add(so_far, final=index == len(tokens) - 1)
    return time.perf_counter() - began, answer.text


def measure(lengths: list[int], rounds: int) -> list[dict[str, Any]]:
    tokenizer = bench_tokenizer()
    corpus = tokenizer(" ".join(load_texts()), add_special_tokens=False)["input_ids"]
    results = []
    for length in lengths:
        tokens = (corpus * (1 + length // len(corpus)))[:length]
        seconds: dict[str, list[float]] = {"whole": [], "incremental": []}
        for _ in range(rounds):
            whole_s, whole_text = whole_answer(tokenizer, tokens)
            window_s, window_text = incremental(tokenizer, tokens)
            if whole_text != window_text:
                raise SystemExit(f"the two texts differ for {length} tokens")
            seconds["whole"].append(whole_s)
            seconds["incremental"].append(window_s)
        whole_us = min(seconds["whole"]) / length * 1e6
        window_us = min(seconds["incremental"]) / length * 1e6
        results.append(
            {
                "tokens": length,
                "whole_us_per_token": whole_us,
                "incremental_us_per_token": window_us,
                "whole/incremental": whole_us / window_us,
            }
        )
    return results


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", default="64,256,1024,4096", help="answer lengths, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the fastest counts")
    args = parser.parse_args(argv)
    results = measure([int(part) for part in args.lengths.split(",")], args.rounds)
    print("| answer tokens | whole answer µs a token | incremental µs a token | whole / incremental |")
    print("|---|---|---|---|")
    for row in results:
        print(
            f"| {row['tokens']:,} | {row['whole_us_per_token']:.1f} | {row['incremental_us_per_token']:.1f} "
            f"| {row['whole/incremental']:.1f}x |"
        )
    return results


if __name__ == "__main__":
    main()
