"""Several choices of one completion (`n` > 1): the request fanned out into n runtime requests for the
same prompt, sent together, and their answers merged back into one response.

The prompt's computation is shared by the runtime's prefix cache, not here: a request whose prompt shares
its head with another one waiting waits for that one's prefill to store the prompt's keys and values, and
one arriving later finds them stored (decoding.plan_prefill), so n choices prefill the prompt once and then
only its last token n-1 times, each counted as a prefix-cache hit.

Seeds: with a `seed`, choice i samples with seed + i (modulo 2**64, the seed's range), so a seeded request
is reproducible, its choice 0 is what the same request with n=1 answers, and its choices differ when
sampling. Without one each choice draws its own random seed in the runtime; greedy choices are identical.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .backend import Piece
from .protocol import invalid

T = TypeVar("T")
SEED_RANGE = 2**64


def choice_seed(seed: int, index: int) -> int:
    """The seed choice `index` of a request seeded with `seed` samples with."""
    return (seed + index) % SEED_RANGE


def fan_out(sampling: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The runtime's sampling parameters of each of `n` choices: the request's, each with its own seed."""
    seed = sampling.get("seed")
    if seed is None:
        return [dict(sampling) for _ in range(n)]
    return [{**sampling, "seed": choice_seed(seed, index)} for index in range(n)]


def check_n(n: int, max_sequences: int | None) -> None:
    """400 for more choices than the deployment decodes together (None: the backend does not say)."""
    if max_sequences is not None and n > max_sequences:
        raise invalid(
            f"n {n} is more choices than this deployment decodes together "
            f"(maxConcurrentSequences {max_sequences}); ask for at most {max_sequences}",
            "n",
        )


def total_usage(usages: Sequence[dict[str, int]]) -> dict[str, int]:
    """The usage of all choices: the prompt once (they share it), the completions summed (as OpenAI and
    vLLM count)."""
    prompt_tokens = usages[0]["prompt_tokens"]
    completion_tokens = sum(usage["completion_tokens"] for usage in usages)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass
class Answer:
    """One choice's answer so far: its text, its last runtime response, its tokens' log-probabilities."""

    text: str = ""
    last: Piece | None = None
    tokens: list[dict[str, Any]] = field(default_factory=list)

    def add(self, piece: Piece) -> None:
        self.text += piece.text
        self.last = piece
        self.tokens += piece.logprobs


async def merged(streams: Sequence[AsyncGenerator[T, None]]) -> AsyncGenerator[tuple[int, T | None], None]:
    """The items of all `streams` as they come, each as (its stream's index, item), and (index, None) when
    that stream ends. Each stream is read ahead by one item, so all make progress whatever the consumer
    does between items. An error in one stream ends this one with it; closing this one (or an error)
    cancels and closes every stream still open, which cancels their Triton requests."""
    if len(streams) == 1:
        # One choice, as nearly every request asks: its items as they come. Without the general path's
        # task and wait per item, the sidecar's CPU per streamed request at 64 clients fell 7-19%
        # (bench/README.md, OpenAI API, "Session 11").
        try:
            async for item in streams[0]:
                yield 0, item
            yield 0, None
        finally:
            await streams[0].aclose()
        return
    pending: dict[asyncio.Future[T], int] = {
        asyncio.ensure_future(anext(stream)): index for index, stream in enumerate(streams)
    }
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in sorted(done, key=pending.__getitem__):
                index = pending.pop(future)
                try:
                    item = future.result()
                except StopAsyncIteration:
                    yield index, None
                    continue
                pending[asyncio.ensure_future(anext(streams[index]))] = index
                yield index, item
    finally:
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for stream in streams:
            await stream.aclose()


async def first_events(events: AsyncIterator[tuple[int, T | None]], n: int) -> list[tuple[int, T | None]]:
    """The events of `merged`'s n streams up to the one that makes each stream have started (its first item
    or its end): a stream refused by the runtime raises here, before anything is sent."""
    taken: list[tuple[int, T | None]] = []
    started: set[int] = set()
    async for index, item in events:  # leaving the loop early does not close the generator
        taken.append((index, item))
        started.add(index)
        if len(started) == n:
            break
    return taken


async def collect(events: AsyncIterator[tuple[int, Piece | None]], n: int) -> list[Answer]:
    """Each of n choices' whole answer, from `merged`'s events."""
    answers = [Answer() for _ in range(n)]
    async for index, piece in events:
        if piece is not None:
            answers[index].add(piece)
    return answers
