"""Texts from many HTTP requests sent to Triton as one request, while Triton is busy.

One `/v1/embeddings` request per text is how clients call (LangChain's retrievers, a RAG pipeline's
chunks), and so do classification clients (TEI's /predict) and rerankers with few documents. Each
request costs a gRPC call here, a request object in Triton, the request's tensors through the Python
backend's shared memory and a response back: work that is the same for one text as for 32. The same
holds per input set: texts alone, text pairs, (query, text) pairs each have their own queue.

While fewer calls than the model has instances are in flight, what waits leaves at once (a lone client
waits for nothing). Beyond that, up to `limit` calls, a call leaves only once a whole batch
(`max_batch` texts) waits: a call's texts are fixed when it leaves, so a part-filled call queued in
Triton would run as a small batch while the texts that arrive after it wait for the next one. That
keeps every instance one full batch ahead, as Triton's own queue does with one request per text.

A call that fails for several requests is retried for each alone, so that one request's bad input is
its own error and not its neighbours'.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

Rows = np.ndarray[Any, Any]
Item = TypeVar("Item")


@dataclass
class _Waiting(Generic[Item]):
    items: list[Item]
    answer: asyncio.Future[Rows] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Coalescer(Generic[Item]):
    """`submit(items)` answers `call(items)`'s rows (one per item: a text, or a pair's texts); each call
    holds at most `max_batch` items (a submission is never split). Up to `eager` calls run at once
    whatever they hold, up to `limit` when the extra ones are full; `limit` 0: no limit, each submission
    its own call."""

    def __init__(
        self, call: Callable[[list[Item]], Awaitable[Rows]], *, max_batch: int, eager: int, limit: int
    ) -> None:
        if max_batch < 1 or limit < 0 or not (0 < eager <= limit or limit == 0):
            raise ValueError(
                f"max_batch >= 1, limit >= 0 and 1 <= eager <= limit, or limit 0 (got {max_batch}, "
                f"{eager}, {limit})"
            )
        self._call = call
        self.max_batch = max_batch
        self.eager = eager
        self.limit = limit
        self._queue: deque[_Waiting[Item]] = deque()
        self._waiting_items = 0
        self._in_flight = 0
        # The running calls' tasks, held so that they are not collected while they run.
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # Triton calls made (the tests read it)

    async def submit(self, items: list[Item]) -> Rows:
        if not 0 < len(items) <= self.max_batch:
            raise ValueError(f"a submission holds 1 to {self.max_batch} items (got {len(items)})")
        waiting = _Waiting(list(items))
        self._queue.append(waiting)
        self._waiting_items += len(waiting.items)
        self._dispatch()
        # A cancelled caller (its client went away) cancels its future; the call it rides in goes on
        # for the others and its rows are dropped.
        return await waiting.answer

    def _may_send(self) -> bool:
        if self.limit == 0 or self._in_flight < self.eager:
            return True
        return self._in_flight < self.limit and self._waiting_items >= self.max_batch

    def _dispatch(self) -> None:
        while self._queue and self._may_send():
            group = self._take()
            if not group:
                return
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Waiting[Item]]:
        """The oldest waiting submissions that fit one call, skipping those whose callers left."""
        group: list[_Waiting[Item]] = []
        size = 0
        while self._queue:
            head = self._queue[0]
            if head.answer.done():
                self._queue.popleft()
                self._waiting_items -= len(head.items)
                continue
            if group and size + len(head.items) > self.max_batch:
                break
            group.append(self._queue.popleft())
            size += len(head.items)
            self._waiting_items -= len(head.items)
            if self.limit == 0:
                break
        return group

    async def _run(self, group: list[_Waiting[Item]]) -> None:
        try:
            await self._answer(group)
        finally:
            self._in_flight -= 1
            self._dispatch()

    async def _answer(self, group: list[_Waiting[Item]]) -> None:
        items = [item for waiting in group for item in waiting.items]
        self.calls += 1
        try:
            rows = await self._call(items)
        except asyncio.CancelledError:
            for waiting in group:
                waiting.answer.cancel()
            raise
        except Exception as exc:  # each caller gets its own call's outcome below
            if len(group) == 1:
                _settle(group[0].answer, error=exc)
                return
            await asyncio.gather(*(self._answer([waiting]) for waiting in group if not waiting.answer.done()))
            return
        start = 0
        for waiting in group:
            stop = start + len(waiting.items)
            _settle(waiting.answer, rows=rows[start:stop])
            start = stop


def _settle(
    answer: asyncio.Future[Rows], *, rows: Rows | None = None, error: Exception | None = None
) -> None:
    if answer.done():
        return
    if error is not None:
        answer.set_exception(error)
    else:
        assert rows is not None
        answer.set_result(rows)


def model_instances(config: Any) -> int:
    """The model's instances in Triton's model config (at least 1): the calls the sidecar sends at once
    whatever they hold; twice that is its default limit (a full batch waiting for each instance)."""
    instances = sum(max(1, int(group.count)) * max(1, len(group.gpus)) for group in config.instance_group)
    return max(1, instances)
