"""Several choices of one completion (model_repo/openai_frontend/choices.py): the fan-out of one request
into n runtime requests and the merge of their answers, on plain async generators. No server; the real
tritonserver runs them in test_openai_frontend.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from pydantic import ValidationError

from model_repo.openai_frontend import choices
from model_repo.openai_frontend.backend import Piece
from model_repo.openai_frontend.protocol import (
    MAX_CHOICES,
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    refuse_unsupported,
)


def test_each_choice_gets_the_seed_plus_its_index_within_the_seeds_range() -> None:
    sampling = {"temperature": 0.8, "seed": 5, "max_tokens": 4}
    fanned = choices.fan_out(sampling, 3)
    assert [item["seed"] for item in fanned] == [5, 6, 7]
    assert all({**item, "seed": 5} == sampling for item in fanned)
    assert sampling["seed"] == 5  # the request's own parameters are left as they were
    assert [item["seed"] for item in choices.fan_out({"seed": 2**64 - 2}, 3)] == [2**64 - 2, 2**64 - 1, 0]


def test_without_a_seed_the_choices_are_the_same_separate_parameters() -> None:
    fanned = choices.fan_out({"temperature": 1.0}, 2)
    assert fanned == [{"temperature": 1.0}] * 2
    fanned[0]["temperature"] = 0.5
    assert fanned[1]["temperature"] == 1.0
    assert choices.fan_out({"seed": 9}, 1) == [{"seed": 9}]


def test_usage_counts_the_shared_prompt_once_and_sums_the_completions() -> None:
    usages = [
        {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
        {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12},
    ]
    assert choices.total_usage(usages) == {"prompt_tokens": 11, "completion_tokens": 12, "total_tokens": 23}
    assert choices.total_usage(usages[:1]) == usages[0]


def test_n_above_the_deployments_concurrent_sequences_is_a_400_naming_n() -> None:
    choices.check_n(8, 8)
    choices.check_n(500, None)  # a backend that does not say (vLLM): only the protocol's bound
    with pytest.raises(OpenAIError) as refused:
        choices.check_n(9, 8)
    assert (refused.value.status, refused.value.param) == (400, "n")
    assert "maxConcurrentSequences 8" in refused.value.message and "n 9" in refused.value.message


@pytest.mark.parametrize("n", [0, -1, MAX_CHOICES + 1])
def test_n_outside_one_to_openais_bound_does_not_validate(n: int) -> None:
    with pytest.raises(ValidationError) as invalid:
        CompletionRequest(model="m", prompt="hello", n=n)
    assert invalid.value.errors()[0]["loc"] == ("n",)
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], n=n)  # type: ignore[list-item]


def test_best_of_is_taken_only_equal_to_n() -> None:
    for n, best_of in [(None, None), (None, 1), (3, None), (3, 3), (1, 1)]:
        refuse_unsupported(CompletionRequest(model="m", prompt="x", n=n, best_of=best_of))
    for n, best_of in [(None, 2), (3, 1), (2, 4)]:
        with pytest.raises(OpenAIError) as refused:
            refuse_unsupported(CompletionRequest(model="m", prompt="x", n=n, best_of=best_of))
        assert refused.value.param == "best_of" and f"({n or 1})" in refused.value.message


async def _items(name: str, count: int, closed: list[str], wait: asyncio.Event | None = None) -> Any:
    try:
        if wait is not None:
            await wait.wait()
        for position in range(count):
            await asyncio.sleep(0)
            yield f"{name}{position}"
    finally:
        closed.append(name)


def test_merged_gives_every_streams_items_in_order_then_its_end_without_waiting_on_a_slow_one() -> None:
    async def run() -> tuple[list[tuple[int, str | None]], list[str]]:
        closed: list[str] = []
        slow = asyncio.Event()
        streams = [_items("a", 3, closed, slow), _items("b", 4, closed), _items("c", 0, closed)]
        events: list[tuple[int, str | None]] = []
        async for event in choices.merged(streams):
            events.append(event)
            if event == (1, None):  # the slow stream starts only once another has ended
                slow.set()
        return events, closed

    events, closed = asyncio.run(run())
    for index, name, count in [(0, "a", 3), (1, "b", 4), (2, "c", 0)]:
        mine = [item for at, item in events if at == index]
        assert mine == [f"{name}{position}" for position in range(count)] + [None]
    assert events.index((1, None)) < events.index((0, "a0"))
    assert sorted(closed) == ["a", "b", "c"]


async def _refused_after_one(closed: list[str]) -> AsyncGenerator[str, None]:
    try:
        yield "x0"
        raise OpenAIError(400, "refused")
    finally:
        closed.append("x")


@pytest.mark.parametrize("alone", [False, True], ids=["beside-a-waiting-stream", "alone"])
def test_an_error_in_one_stream_ends_the_merge_and_closes_every_stream(alone: bool) -> None:
    closed: list[str] = []
    never = asyncio.Event()
    others = [] if alone else [_items("a", 1, closed, never)]

    async def run() -> list[tuple[int, str | None]]:
        seen: list[tuple[int, str | None]] = []
        with pytest.raises(OpenAIError, match="refused"):
            async for event in choices.merged([*others, _refused_after_one(closed)]):
                seen.append(event)
        return seen

    assert asyncio.run(run()) == [(len(others), "x0")]
    # A waiting stream is cancelled, not left running.
    assert sorted(closed) == (["x"] if alone else ["a", "x"])


def test_closing_the_merge_early_closes_every_stream() -> None:
    closed: list[str] = []

    async def run() -> None:
        merge = choices.merged([_items("a", 100, closed), _items("b", 100, closed)])
        assert (await anext(merge))[1] is not None
        await merge.aclose()

    asyncio.run(run())
    assert sorted(closed) == ["a", "b"]


def test_first_events_stop_once_every_stream_started_and_the_rest_follow() -> None:
    async def run() -> tuple[list[tuple[int, str | None]], list[tuple[int, str | None]]]:
        closed: list[str] = []
        merge = choices.merged([_items("a", 3, closed), _items("b", 0, closed), _items("c", 2, closed)])
        first = await choices.first_events(merge, 3)
        rest = [event async for event in merge]
        return first, rest

    first, rest = asyncio.run(run())
    assert {index for index, _ in first} == {0, 1, 2}
    assert {index for index, _ in first[:-1]} != {0, 1, 2}  # the last one completed the set
    everything = first + rest
    assert [item for index, item in everything if index == 0] == ["a0", "a1", "a2", None]
    assert [item for index, item in everything if index == 1] == [None]
    assert [item for index, item in everything if index == 2] == ["c0", "c1", None]


def test_collect_assembles_each_choices_text_last_response_and_logprobs() -> None:
    def piece(text: str, tokens: int, finish: str | None = None) -> Piece:
        return Piece(text, 5, tokens, finish, None, ({"token": text, "logprob": -0.5, "top_logprobs": []},))

    async def stream(*pieces: Piece) -> AsyncGenerator[Piece, None]:
        for item in pieces:
            await asyncio.sleep(0)
            yield item

    async def run() -> list[choices.Answer]:
        merge = choices.merged(
            [stream(piece("he", 1), piece("llo", 2, "stop")), stream(piece("hi", 1, "length"))]
        )
        return await choices.collect(merge, 2)

    first, second = asyncio.run(run())
    assert (first.text, second.text) == ("hello", "hi")
    assert first.last is not None and first.last.finish_reason == "stop" and first.last.output_tokens == 2
    assert second.last is not None and second.last.finish_reason == "length"
    assert [token["token"] for token in first.tokens] == ["he", "llo"]


def test_one_stream_is_merged_as_its_items_then_its_end_and_closed_with_the_merge() -> None:
    async def run() -> tuple[list[tuple[int, str | None]], list[str], list[str]]:
        closed: list[str] = []
        whole = [event async for event in choices.merged([_items("a", 3, closed)])]
        left: list[str] = []
        merge = choices.merged([_items("b", 100, left)])
        assert await anext(merge) == (0, "b0")
        await merge.aclose()  # the client went away: the Triton stream is closed at once
        return whole, closed, left

    whole, closed, left = asyncio.run(run())
    assert whole == [(0, "a0"), (0, "a1"), (0, "a2"), (0, None)]
    assert closed == ["a"] and left == ["b"]
