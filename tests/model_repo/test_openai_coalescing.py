"""The OpenAI sidecar's coalescing of embedding requests (model_repo/openai_frontend/coalescing.py), driven
by a recording call in place of Triton so that the timing is the test's own: which submissions share a
call depends on what is in flight when they arrive. The real sidecar in front of the real tritonserver is
tested in test_openai_frontend.py (`test_concurrent_embedding_requests_share_triton_calls...`)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from model_repo.openai_frontend.coalescing import Coalescer, model_instances


class RecordingCall:
    """Answers each text with a row holding its length, once the test releases the call."""

    def __init__(self, *, refuse: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.release = asyncio.Event()
        self.refuse = refuse

    async def __call__(self, texts: list[str]) -> np.ndarray[Any, Any]:
        self.calls.append(list(texts))
        await self.release.wait()
        if self.refuse is not None and self.refuse in texts:
            # A fault the real runtime cannot be made to produce for one text of a batch on demand:
            # the sidecar's own checks refuse what the runtime would.
            raise ValueError(f"refused {self.refuse!r}")
        return np.array([[float(len(text))] for text in texts], dtype=np.float32)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_lone_submission_goes_at_once() -> None:
    async def scenario() -> None:
        call = RecordingCall()
        coalescer = Coalescer(call, max_batch=4, eager=1, limit=2)
        answer = asyncio.create_task(coalescer.submit(["abc"]))
        await _settle()
        assert call.calls == [["abc"]]
        call.release.set()
        assert (await answer).tolist() == [[3.0]]

    asyncio.run(scenario())


def test_submissions_that_wait_share_the_next_call_without_passing_max_batch() -> None:
    async def scenario() -> None:
        call = RecordingCall()
        coalescer = Coalescer(call, max_batch=4, eager=1, limit=1)
        first = asyncio.create_task(coalescer.submit(["a"]))
        await _settle()
        waiting = [
            asyncio.create_task(coalescer.submit(texts))
            for texts in (["bb"], ["ccc", "dddd"], ["eeeee", "f"], ["gg"])
        ]
        await _settle()
        assert call.calls == [["a"]]  # the limit holds the others back
        call.release.set()
        answers = [await task for task in (first, *waiting)]
        # In arrival order, whole submissions, at most 4 texts a call: [bb, ccc, dddd] then [eeeee, f, gg].
        assert call.calls == [["a"], ["bb", "ccc", "dddd"], ["eeeee", "f", "gg"]]
        assert [answer[:, 0].tolist() for answer in answers] == [[1], [2], [3, 4], [5, 1], [2]]
        assert coalescer.calls == 3

    asyncio.run(scenario())


def test_beyond_the_eager_calls_only_a_full_call_leaves() -> None:
    async def scenario() -> None:
        call = RecordingCall()
        coalescer = Coalescer(call, max_batch=3, eager=1, limit=2)
        first = asyncio.create_task(coalescer.submit(["a"]))
        await _settle()
        # One call runs (the eager one): two texts wait, not a whole batch, so nothing more leaves...
        pair = [asyncio.create_task(coalescer.submit([text])) for text in ("bb", "ccc")]
        await _settle()
        assert call.calls == [["a"]]
        # ...until a third makes a batch of 3: the second call leaves full, while the first still runs.
        third = asyncio.create_task(coalescer.submit(["dddd"]))
        await _settle()
        assert call.calls == [["a"], ["bb", "ccc", "dddd"]]
        # The limit (2) is reached: a whole batch more waits for a call to end.
        later = [asyncio.create_task(coalescer.submit([text])) for text in ("e", "ff", "ggg", "h")]
        await _settle()
        assert len(call.calls) == 2
        call.release.set()
        answers = [(await task)[:, 0].tolist() for task in (first, *pair, third, *later)]
        assert answers == [[1], [2], [3], [4], [1], [2], [3], [1]]
        assert call.calls[2:] == [["e", "ff", "ggg"], ["h"]]

    asyncio.run(scenario())


def test_without_a_limit_each_submission_is_its_own_call() -> None:
    async def scenario() -> None:
        call = RecordingCall()
        coalescer = Coalescer(call, max_batch=4, eager=1, limit=0)
        tasks = [asyncio.create_task(coalescer.submit([text])) for text in ("a", "bb", "ccc")]
        await _settle()
        assert call.calls == [["a"], ["bb"], ["ccc"]]  # all in flight at once
        call.release.set()
        assert [(await task).tolist() for task in tasks] == [[[1.0]], [[2.0]], [[3.0]]]

    asyncio.run(scenario())


def test_a_refused_shared_call_is_retried_alone_for_each_so_only_the_bad_one_fails() -> None:
    async def scenario() -> None:
        call = RecordingCall(refuse="bad")
        coalescer = Coalescer(call, max_batch=8, eager=1, limit=1)
        first = asyncio.create_task(coalescer.submit(["a"]))
        await _settle()
        good = asyncio.create_task(coalescer.submit(["good"]))
        bad = asyncio.create_task(coalescer.submit(["bad"]))
        also_good = asyncio.create_task(coalescer.submit(["fine", "ok"]))
        await _settle()
        call.release.set()
        assert (await first).tolist() == [[1.0]]
        assert (await good).tolist() == [[4.0]]
        assert (await also_good).tolist() == [[4.0], [2.0]]
        with pytest.raises(ValueError, match="refused 'bad'"):
            await bad
        assert call.calls == [["a"], ["good", "bad", "fine", "ok"], ["good"], ["bad"], ["fine", "ok"]]

    asyncio.run(scenario())


def test_a_caller_that_leaves_is_dropped_and_the_others_are_answered() -> None:
    async def scenario() -> None:
        call = RecordingCall()
        coalescer = Coalescer(call, max_batch=8, eager=1, limit=1)
        first = asyncio.create_task(coalescer.submit(["a"]))
        await _settle()
        gone_before = asyncio.create_task(coalescer.submit(["never sent"]))
        stays = asyncio.create_task(coalescer.submit(["stays"]))
        await _settle()
        gone_before.cancel()  # its client disconnected while it waited
        await _settle()
        call.release.set()
        assert (await first).tolist() == [[1.0]]
        assert (await stays).tolist() == [[5.0]]
        assert gone_before.cancelled()
        assert call.calls == [["a"], ["stays"]]

    asyncio.run(scenario())


def test_submissions_outside_one_call_or_a_bad_limit_are_refused() -> None:
    async def scenario() -> None:
        coalescer = Coalescer(RecordingCall(), max_batch=2, eager=1, limit=1)
        with pytest.raises(ValueError, match="1 to 2 items"):
            await coalescer.submit(["a", "b", "c"])
        with pytest.raises(ValueError, match="1 to 2 items"):
            await coalescer.submit([])

    asyncio.run(scenario())
    for eager, limit in ((1, -1), (0, 2), (3, 2)):
        with pytest.raises(ValueError, match="eager <= limit"):
            Coalescer(RecordingCall(), max_batch=2, eager=eager, limit=limit)


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ([("KIND_CPU", 1, [])], 1),
        ([("KIND_GPU", 2, [])], 2),
        ([("KIND_GPU", 2, [0, 1])], 4),
        ([], 1),
    ],
)
def test_the_models_instances_come_from_its_config(
    groups: list[tuple[str, int, list[int]]], expected: int
) -> None:
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig(name="m", max_batch_size=32)
    for kind, count, gpus in groups:
        group = config.instance_group.add()
        group.kind = model_config_pb2.ModelInstanceGroup.Kind.Value(kind)
        group.count = count
        group.gpus.extend(gpus)
    assert model_instances(config) == expected
