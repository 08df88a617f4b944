"""Async load generators: closed loop (N clients, each sends its next text when the last one answered)
and open loop (arrivals at a given rate, whether or not earlier requests have finished).

A sender is any `async (text) -> None` that raises when the request failed; senders for Triton (gRPC,
via `tritonclient.grpc.aio`) and for a plain HTTP JSON endpoint (aiohttp) are here.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Sender = Callable[[str], Awaitable[None]]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass
class ClosedLoopResult:
    concurrency: int
    requests: int  # completed inside the measurement window
    errors: int
    window_s: float
    latencies_ms: list[float] = field(repr=False)
    first_error: str | None = None

    @property
    def throughput(self) -> float:
        return self.requests / self.window_s if self.window_s > 0 else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.latencies_ms)) if self.latencies_ms else math.nan

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "first_error": self.first_error,
            "window_s": round(self.window_s, 3),
            "throughput_rps": round(self.throughput, 2),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "mean_ms": round(self.mean_ms, 3),
        }


async def closed_loop(
    send: Sender,
    texts: Sequence[str],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    on_window_start: Callable[[], Awaitable[None]] | None = None,
) -> ClosedLoopResult:
    """`concurrency` clients send texts (in the workload's order, shared) for warm-up + `duration_s`.

    Throughput counts requests that complete inside the measurement window; latency is that of the same
    requests. `on_window_start` runs when the window opens (used to scrape server metrics there).
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    next_text: Iterator[str] = itertools.cycle(texts)
    loop = asyncio.get_running_loop()
    start = loop.time()
    window_start = start + warmup_s
    window_end = window_start + duration_s
    latencies: list[float] = []
    errors = 0
    first_error: list[str] = []

    async def client() -> None:
        nonlocal errors
        while True:
            began = loop.time()
            if began >= window_end:
                return
            try:
                await send(next(next_text))
            except Exception as exc:  # a failed request is counted, never hidden
                ended = loop.time()
                if window_start <= ended <= window_end:
                    errors += 1
                    if not first_error:
                        first_error.append(f"{type(exc).__name__}: {exc}")
                continue
            ended = loop.time()
            if window_start <= ended <= window_end and began >= window_start:
                latencies.append((ended - began) * 1000.0)

    async def window_marker() -> None:
        await asyncio.sleep(max(0.0, window_start - loop.time()))
        if on_window_start is not None:
            await on_window_start()

    await asyncio.gather(window_marker(), *(client() for _ in range(concurrency)))
    return ClosedLoopResult(
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        window_s=duration_s,
        latencies_ms=latencies,
        first_error=first_error[0] if first_error else None,
    )


@dataclass
class OpenLoopStats:
    """Counters of an open-loop generator, read (and reset) by whoever samples it."""

    sent: int = 0
    completed: int = 0
    errors: int = 0
    shed: int = 0  # arrivals dropped because too many requests were already outstanding
    in_flight: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def take(self) -> OpenLoopStats:
        snapshot = OpenLoopStats(
            self.sent, self.completed, self.errors, self.shed, self.in_flight, self.latencies_ms
        )
        self.sent = self.completed = self.errors = self.shed = 0
        self.latencies_ms = []
        return snapshot


class OpenLoop:
    """Poisson arrivals at `rate()` requests/s (re-read continuously, so the rate can change on the fly).

    Arrivals beyond `max_in_flight` outstanding requests are shed and counted, so an overloaded server
    cannot make the generator itself run out of memory.
    """

    def __init__(self, send: Sender, texts: Sequence[str], max_in_flight: int = 512, seed: int = 0) -> None:
        self.send = send
        self.texts = itertools.cycle(texts)
        self.max_in_flight = max_in_flight
        self.random = random.Random(seed)
        self.stats = OpenLoopStats()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _one(self, text: str) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            await self.send(text)
        except Exception:
            self.stats.errors += 1
        else:
            self.stats.completed += 1
            self.stats.latencies_ms.append((loop.time() - began) * 1000.0)
        finally:
            self.stats.in_flight -= 1

    async def run(self, rate: Callable[[], float], until: float) -> None:
        """Generate arrivals until the monotonic clock (`time.monotonic()`) reaches `until`."""
        # Arrival times are absolute, so the event loop's own delays do not lower the offered rate.
        next_arrival = time.monotonic()
        while time.monotonic() < until:
            current = rate()
            if current <= 0:
                await asyncio.sleep(0.05)
                next_arrival = time.monotonic()
                continue
            next_arrival += self.random.expovariate(current)
            delay = next_arrival - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stats.in_flight >= self.max_in_flight:
                self.stats.shed += 1
                continue
            self.stats.sent += 1
            self.stats.in_flight += 1
            task = asyncio.create_task(self._one(next(self.texts)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


# ---------------------------------------------------------------------------------------------------
# Senders.
# ---------------------------------------------------------------------------------------------------


class TritonGrpcSender:
    """One text per request to a Triton model over gRPC (`tritonclient.grpc.aio`).

    `batched`: the model has max_batch_size > 0, so the input carries a leading batch dimension.
    """

    def __init__(self, url: str, model: str, input_name: str = "TEXT", batched: bool = True) -> None:
        import tritonclient.grpc.aio as grpcclient

        self._module = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.model = model
        self.input_name = input_name
        self.shape = [1, 1] if batched else [1]

    async def __call__(self, text: str) -> None:
        tensor = self._module.InferInput(self.input_name, self.shape, "BYTES")
        tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_).reshape(self.shape))
        result = await self.client.infer(self.model, [tensor])
        if not result.get_response().outputs:
            raise RuntimeError(f"{self.model} answered without outputs")

    async def close(self) -> None:
        await self.client.close()


@dataclass(frozen=True)
class FirstToken:
    """One generation request as its client saw it (`time.monotonic()` seconds)."""

    sent: float
    ttft_ms: float | None  # None: refused or failed before its first token
    output_tokens: int
    finished: float


class TritonGenerationSender:
    """One prompt per request to a Triton generation model (the runtime's LLM contract), streamed over a
    gRPC stream of its own (`tritonclient.grpc.aio`), greedy; each answer asks for a number of tokens drawn
    evenly from [min_tokens, max_tokens] (seeded). Every request's time to first token is kept in
    `first_tokens` for whoever reads (and clears) it with `take_first_tokens`."""

    def __init__(self, url: str, model: str, min_tokens: int, max_tokens: int, seed: int = 0) -> None:
        import tritonclient.grpc.aio as grpcclient

        self._module = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.model = model
        self.min_tokens, self.max_tokens = min_tokens, max_tokens
        self.random = random.Random(seed)
        self.first_tokens: list[FirstToken] = []

    def _inputs(self, text: str, max_tokens: int) -> list[Any]:
        module = self._module
        values = (
            ("text_input", "BYTES", np.array([text.encode()], dtype=np.object_)),
            ("stream", "BOOL", np.array([True])),
            ("max_tokens", "INT32", np.array([max_tokens], dtype=np.int32)),
            ("temperature", "FP32", np.array([0.0], dtype=np.float32)),
        )
        inputs = []
        for name, datatype, value in values:
            tensor = module.InferInput(name, [1], datatype)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        return inputs

    async def __call__(self, text: str) -> None:
        request = {
            "model_name": self.model,
            "inputs": self._inputs(text, self.random.randint(self.min_tokens, self.max_tokens)),
        }

        async def one_request() -> Any:
            yield request

        sent = time.monotonic()
        first: float | None = None
        tokens = 0
        try:
            # The stream ends once its one request has had its final response.
            async for result, error in self.client.stream_infer(one_request()):
                if error is not None:
                    raise error
                counted = result.as_numpy("num_output_tokens")
                if counted is not None:
                    first = first or time.monotonic()
                    tokens = int(counted[0])
        finally:
            ttft = None if first is None else (first - sent) * 1000.0
            self.first_tokens.append(FirstToken(sent, ttft, tokens, time.monotonic()))
        if first is None:
            raise RuntimeError(f"{self.model} answered without a token")

    def take_first_tokens(self) -> list[FirstToken]:
        taken, self.first_tokens = self.first_tokens, []
        return taken

    async def close(self) -> None:
        await self.client.close()


class PooledHttpSender:
    """A sender over one pooled aiohttp session, opened on first use (inside the load generator's loop)."""

    def __init__(self, connections: int) -> None:
        self.connections = connections
        self._session: Any = None

    def session(self) -> Any:
        import aiohttp

        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.connections)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def post_json(self, url: str, body: Any) -> None:
        """POST `body` as JSON and read the whole answer; anything but 200 is an error."""
        async with self.session().post(url, json=body) as response:
            payload = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpJsonSender(PooledHttpSender):
    """POST {"text": ...} to a JSON endpoint (the FastAPI baseline) over a pooled aiohttp session."""

    def __init__(self, url: str, connections: int = 100) -> None:
        super().__init__(connections)
        self.url = url

    async def __call__(self, text: str) -> None:
        await self.post_json(self.url, {"text": text})


class OpenAIEmbeddingSender(PooledHttpSender):
    """POST one text to an OpenAI-style `/embeddings` route (our sidecar's `/v1/embeddings`, Infinity's
    `/embeddings`), as an OpenAI client would."""

    def __init__(self, url: str, model: str, connections: int = 100) -> None:
        super().__init__(connections)
        self.url, self.model = url, model

    async def __call__(self, text: str) -> None:
        await self.post_json(self.url, {"model": self.model, "input": text})
