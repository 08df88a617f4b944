"""What the rerank, score, classify and TEI routes share: the model's Triton contract for pairs and
classes, requests split within the model's max batch size (parts run concurrently, results in order),
and token arrays mapped back to text (whose ids they are: token_arrays.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from .backend import TritonBackend
from .model import ServedModel
from .protocol import OpenAIError, invalid
from .token_arrays import Vocabulary

Item = TypeVar("Item")
Array = np.ndarray[Any, Any]


class Frontend(Protocol):
    """What the rerank and TEI routes use of app.py's Frontend (imported from neither side)."""

    model: ServedModel
    backend: TritonBackend

    def check_model(self, requested: str, task: str, endpoint: str) -> None: ...

    async def embed_texts(self, texts: list[str]) -> Array: ...

    async def infer_rows(
        self, inputs: tuple[str, ...], output: str, items: Sequence[tuple[str, ...]]
    ) -> Array: ...


async def max_batch_size(backend: TritonBackend, model: ServedModel) -> int:
    return max(1, int((await backend.config(model.triton_name)).max_batch_size))


async def in_batches(
    items: Sequence[Item], batch: int, run: Callable[[Sequence[Item]], Awaitable[Array]]
) -> Array:
    """`run` over slices of at most `batch` items, concurrently; the results concatenated in order."""
    parts = await asyncio.gather(
        *(run(items[start : start + batch]) for start in range(0, len(items), batch))
    )
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


async def relevance(frontend: Frontend, query: str, texts: Sequence[str]) -> Array:
    """[len(texts)] scores of (query, text) from a text-ranking model, in the order of `texts`."""
    return await pair_scores(frontend, [query] * len(texts), texts)


async def pair_scores(frontend: Frontend, queries: Sequence[str], texts: Sequence[str]) -> Array:
    pairs = list(zip(queries, texts, strict=True))
    scores = await frontend.infer_rows(("QUERY", "TEXT"), "SCORE", pairs)
    return scores.reshape(-1).astype(np.float32)


async def class_probabilities(frontend: Frontend, texts: Sequence[str], pairs: Sequence[str | None]) -> Array:
    """[len(texts), labels] probabilities from a text-classification model; an item with a second text
    is classified as a pair. Items with and without one go in separate requests (an input is per request)."""
    result = np.zeros((len(texts), len(frontend.model.labels)), dtype=np.float32)
    for with_pair in (False, True):
        members = [i for i, pair in enumerate(pairs) if (pair is not None) == with_pair]
        if not members:
            continue
        if with_pair:
            rows = await frontend.infer_rows(
                ("TEXT", "TEXT_PAIR"), "SCORES", [(texts[i], str(pairs[i])) for i in members]
            )
        else:
            rows = await frontend.infer_rows(("TEXT",), "SCORES", [(texts[i],) for i in members])
        result[members] = rows.astype(np.float32)
    return result


def check_texts(texts: Sequence[str], field: str, error: Callable[[str, str], Exception]) -> None:
    """Each text non-empty (the runtime refuses empty ones; say which item here)."""
    for index, text in enumerate(texts):
        if not text.strip():
            raise error(f"{field}[{index}] must be non-empty text", f"{field}[{index}]")


def texts_of_token_arrays(
    vocabulary: Vocabulary,
    arrays: Sequence[Sequence[int]],
    field: str,
    error: Callable[[str, str], Exception],
) -> list[str]:
    """The text of each token array, read in `vocabulary` (token_arrays.py); ids outside it refused."""
    texts = []
    for row, ids in enumerate(arrays):
        where = f"{field}[{row}]" if len(arrays) > 1 else field
        if not ids:
            raise error(f"{where} must hold at least one token id", where)
        refusal = vocabulary.refusal(ids)
        if refusal is not None:
            raise error(f"{where} holds {refusal}", where)
        text = vocabulary.text(ids)
        if not text.strip():
            raise error(f"{where} decodes to no text (only special tokens)", where)
        texts.append(text)
    return texts


def openai_invalid(message: str, field: str) -> OpenAIError:
    return invalid(message, field)
