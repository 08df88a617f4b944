"""Text pairs for the encoder runtime: a cross-encoder's (query, text) pairs for text-ranking, and the
optional second text of text-classification (NLI-style checkpoints), with the score a cross-encoder's own
library returns (sentence-transformers' CrossEncoder applies its activation to the single logit).

Copied next to model.py for those two tasks and imported by the encoder role; like model.py it imports
only numpy, so the builder and tests import it as `model_repo.runtime.ranking`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[Any]
# The input holding each item's other text, and whether a request must send it. For text-ranking the
# tokenizer sees (QUERY, TEXT), the order sentence-transformers' CrossEncoder.rank uses.
PAIR_INPUTS: dict[str, tuple[str, bool]] = {
    "text-ranking": ("QUERY", True),
    "text-classification": ("TEXT_PAIR", False),
}
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "sigmoid": lambda logits: 1.0 / (1.0 + np.exp(-logits)),
    "identity": lambda logits: logits,
    "tanh": np.tanh,
}


def relevance_scores(logits: Array, activation: str) -> Array:
    """[batch] scores from [batch, 1] logits: the checkpoint's activation on its single logit."""
    result: Array = ACTIVATIONS[activation](logits.astype(np.float32).reshape(-1)).astype(np.float32)
    return result


def read_pairs(
    task: str, count: int, texts_of: Callable[[str], list[str] | None], error: Callable[[str], Exception]
) -> list[str | None]:
    """The other text of each of a request's `count` items (None where the task's pair is optional and
    the request sends none). `texts_of(name)` decodes an input, None if the request lacks it."""
    name, required = PAIR_INPUTS[task]
    pairs = texts_of(name)
    if pairs is None:
        if required:
            raise error(f"input {name} is required for {task}: one per TEXT")
        return [None] * count
    if len(pairs) != count:
        raise error(f"input {name} must hold one text per TEXT item: got {len(pairs)} for {count}")
    return list(pairs)


def tokenize_pairs(
    tokenizer: Any, task: str, texts: list[str], pairs: list[str | None], **options: Any
) -> dict[str, list[Any]]:
    """Token ids (and what else `options` asks for) per item: pairs through the tokenizer's pair
    encoding (special tokens and token types as the checkpoint was trained), single texts alone."""
    query_first = task == "text-ranking"
    paired = [index for index, pair in enumerate(pairs) if pair is not None]
    single = [index for index, pair in enumerate(pairs) if pair is None]
    merged: dict[str, list[Any]] = {}
    for members, with_pairs in ((paired, True), (single, False)):
        if not members:
            continue
        firsts = [texts[i] for i in members]
        if with_pairs:
            seconds = [str(pairs[i]) for i in members]
            if query_first:
                firsts, seconds = seconds, firsts
            encoded = tokenizer(firsts, seconds, truncation=True, **options)
        else:
            encoded = tokenizer(firsts, truncation=True, **options)
        for key, values in encoded.items():
            merged.setdefault(key, [None] * len(texts))
            for index, value in zip(members, values, strict=True):
                merged[key][index] = value
    return merged
