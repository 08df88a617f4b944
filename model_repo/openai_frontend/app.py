"""The FastAPI application: OpenAI's routes mapped onto the model's Triton contract."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from fastapi.telemetry import TelemetryConfig
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import choices, rerank, scoring, tei
from .auth import require_api_keys
from .backend import Piece, TritonBackend
from .coalescing import Coalescer, model_instances
from .json_body import JSONAnswer, dumps
from .model import EMBEDDING_TASK, GENERATION_TASK, ServedModel
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    GenerationRequest,
    OpenAIError,
    invalid,
    refuse_unsupported,
)
from .sampling import chat_logprobs, completion_logprobs, runtime_sampling
from .token_arrays import Vocabulary

T = TypeVar("T")
# FastAPI's built-in OpenTelemetry instrumentation, off: this sidecar configures no OpenTelemetry provider,
# and unconfigured FastAPI still asked the three global providers on every request (8% of the sidecar's
# CPU at 64 clients, one text per request; bench/README.md, "Session 11"). Its metrics are Triton's.
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
# HTTP status logged for a request whose client left before the answer (nginx's convention).
CLIENT_CLOSED = 499


class ClientGone(Exception):
    """The HTTP client disconnected before the answer was ready."""


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled (and with it the Triton request) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OpenAIError):
            await task
        raise ClientGone
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


def _error_response(error: OpenAIError) -> JSONAnswer:
    return JSONAnswer(error.body(), status_code=error.status)


def _param_of(location: tuple[Any, ...]) -> str | None:
    parts = [str(part) for part in location if part != "body"]
    return ".".join(parts) if parts else None


def _json(answer: Any) -> Response:
    return answer if isinstance(answer, Response) else JSONAnswer(answer)


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + dumps(data) + b"\n\n"


def _choice(
    index: int, key: str, value: Any, finish: str | None, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Choice `index` of a completion object or chunk: `key` is text, message or delta."""
    return {"index": index, key: value, "finish_reason": finish, "logprobs": logprobs}


# A chunk of a stream: (choice index, new text, finish reason, usage, the new tokens' log-probabilities) ->
# the chunk.
Chunk = Callable[
    [int, str | None, str | None, dict[str, int] | None, list[dict[str, Any]] | None], dict[str, Any]
]
# One choice of the chunks that carry it: (new text, finish reason, the new tokens' log-probabilities).
# Each choice has its own (its text offset, whether its role was sent).
ChunkChoice = Callable[[str | None, str | None, list[dict[str, Any]] | None], dict[str, Any]]


def _completion(
    ident: str,
    kind: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, int] | None,
    with_usage: bool = True,
) -> dict[str, Any]:
    """A completion object or stream chunk, in OpenAI's field order. A chunk carries `usage` (null until
    the last) only with `stream_options.include_usage`."""
    data = {"id": ident, "object": kind, "created": created, "model": model, "choices": choices}
    if with_usage:
        data["usage"] = usage
    return data


def _chunks(
    ident: str, kind: str, created: int, model: str, include_usage: bool, per_choice: Sequence[ChunkChoice]
) -> Chunk:
    """A stream's chunks: each has one choice, made by that choice's function in `per_choice`, except the
    usage chunk, which has none."""

    def chunk(
        index: int,
        text: str | None,
        finish: str | None,
        usage: dict[str, int] | None,
        tokens: list[dict[str, Any]] | None,
    ) -> dict[str, Any]:
        made = [] if usage is not None else [per_choice[index](text, finish, tokens)]
        return _completion(ident, kind, created, model, made, usage, include_usage)

    return chunk


class Frontend:
    """Route handlers for one model (kept thin: validate, map, call Triton, shape the answer)."""

    def __init__(
        self,
        model: ServedModel,
        backend: TritonBackend,
        token_arrays: Vocabulary | None = None,
        calls_in_flight: int | None = None,
    ) -> None:
        self.model = model
        self.backend = backend
        # Whose ids the token arrays of /v1/embeddings hold (--token-arrays; token_arrays.py).
        self.token_arrays = token_arrays if token_arrays is not None else model.vocabulary
        # Calls to Triton in flight at once per input set (--calls-in-flight; coalescing.py): None, twice
        # the model's instances, read from its config at the first request.
        self.calls_in_flight = calls_in_flight
        self._coalescers: dict[tuple[tuple[str, ...], str], Coalescer[tuple[str, ...]]] = {}

    # -- shared checks ---------------------------------------------------------------------------------

    def check_model(self, requested: str, task: str, endpoint: str) -> None:
        if requested != self.model.model_id:
            raise OpenAIError(
                404,
                f"the model {requested!r} does not exist; this server serves {self.model.model_id!r}",
                param="model",
                code="model_not_found",
            )
        if self.model.task != task:
            raise invalid(
                f"{endpoint} serves {task} models; {self.model.model_id} is a {self.model.task} model",
                "model",
                "unsupported_task",
            )

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.model.model_id,
            "object": "model",
            "created": self.model.created,
            "owned_by": "modeldeploy",
            "metadata": {
                "task": self.model.task,
                "format": self.model.model_format,
                "triton_model": self.model.triton_name,
            },
        }

    # -- embeddings ------------------------------------------------------------------------------------

    async def embeddings(self, body: EmbeddingRequest) -> dict[str, Any]:
        self.check_model(body.model, EMBEDDING_TASK, "/v1/embeddings")
        strings = self.embedding_texts(body.input)
        config = await self.backend.config(self.model.triton_name)
        output = next((o for o in config.output if o.name == "EMBEDDING"), None)
        dims = int(output.dims[-1]) if output is not None else None
        if body.dimensions is not None and body.dimensions != dims:
            raise invalid(
                f"dimensions {body.dimensions} is not supported: {self.model.model_id} returns "
                f"{dims}-dimensional embeddings and cannot shorten them (omit dimensions or pass {dims})",
                "dimensions",
            )
        vectors = await self.embed_texts(strings)
        tokens = self.model.count_tokens(strings)
        data = []
        for index, vector in enumerate(vectors):
            if body.encoding_format == "base64":
                encoded: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            else:
                encoded = vector  # a float32 row, written by the JSON body's encoder (json_body.py)
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        return {
            "object": "list",
            "data": data,
            "model": self.model.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def embedding_texts(self, value: str | list[str] | list[int] | list[list[int]]) -> list[str]:
        """The texts of an embeddings `input`: a string, strings, or token arrays (one or several)."""
        items: list[Any] = [value] if isinstance(value, str) else list(value)
        if not items:
            raise invalid("input must not be empty", "input")
        if all(isinstance(item, int) for item in items):
            return scoring.texts_of_token_arrays(self.token_arrays, [items], "input", invalid)
        if all(isinstance(item, list) for item in items):
            return scoring.texts_of_token_arrays(self.token_arrays, items, "input", invalid)
        strings = [str(item) for item in items]
        scoring.check_texts(strings, "input", invalid)
        return strings

    async def embed_texts(self, texts: list[str]) -> np.ndarray[Any, Any]:
        """[len(texts), dims] float32 embeddings (infer_rows)."""
        rows = await self.infer_rows(("TEXT",), "EMBEDDING", [(text,) for text in texts])
        return rows.astype(np.float32, copy=False)

    async def infer_rows(
        self, inputs: tuple[str, ...], output: str, items: Sequence[tuple[str, ...]]
    ) -> np.ndarray[Any, Any]:
        """`output`'s rows for `items` (one text per name in `inputs`), in requests within the model's max
        batch size; the items of other requests that wait meanwhile share those requests (coalescing.py)."""
        coalescer = await self._coalescer(inputs, output)

        async def run(part: Sequence[tuple[str, ...]]) -> np.ndarray[Any, Any]:
            return await coalescer.submit(list(part))

        return await scoring.in_batches(items, coalescer.max_batch, run)

    async def _coalescer(self, inputs: tuple[str, ...], output: str) -> Coalescer[tuple[str, ...]]:
        key = (inputs, output)
        if key not in self._coalescers:
            config = await self.backend.config(self.model.triton_name)
            instances = model_instances(config)
            limit = self.calls_in_flight if self.calls_in_flight is not None else 2 * instances

            async def call(items: list[tuple[str, ...]]) -> np.ndarray[Any, Any]:
                columns = {name: [item[i] for item in items] for i, name in enumerate(inputs)}
                answer = await self.backend.infer_texts(self.model.triton_name, columns, [output])
                return answer[output]

            # Another request may have made one while this one awaited the config: keep the first.
            self._coalescers.setdefault(
                key,
                Coalescer(
                    call,
                    max_batch=max(1, int(config.max_batch_size)),
                    eager=min(instances, limit) if limit else 1,
                    limit=limit,
                ),
            )
        return self._coalescers[key]

    # -- generation ------------------------------------------------------------------------------------

    async def samplings(self, body: GenerationRequest, max_tokens: int | None) -> list[dict[str, Any]]:
        """The runtime's sampling parameters of each of the request's `n` choices (choices.py)."""
        refuse_unsupported(body)
        n = body.n or 1
        if n > 1:
            choices.check_n(n, await self.backend.max_concurrent_sequences(self.model.triton_name))
        if max_tokens is None:
            # Unset: up to the end of the context (the runtime clamps to the room the prompt leaves),
            # bounded by the deployment's maxTokens.
            max_tokens = await self.backend.max_tokens_limit(self.model.triton_name)
        return choices.fan_out(runtime_sampling(body, max_tokens), n)

    def usage(self, prompt: str, text: str, last: Piece | None) -> dict[str, int]:
        prompt_tokens = last.input_tokens if last is not None else None
        completion_tokens = last.output_tokens if last is not None else None
        # Backends without token counts (Triton's vLLM backend): count with the checkpoint's tokenizer.
        if prompt_tokens is None:
            prompt_tokens = len(self.model.tokenizer(prompt)["input_ids"])
        if completion_tokens is None:
            completion_tokens = len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"])
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    async def finish_reason(self, usage: dict[str, int], max_tokens: int | None, last: Piece | None) -> str:
        if last is not None and last.finish_reason:  # the runtime says why it stopped
            return last.finish_reason
        # A backend without that output (vLLM): judged by the count. Without max_tokens the runtime applies
        # the default its repository was built with; a backend that publishes none is never cut short.
        limit = max_tokens
        if limit is None:
            limit = await self.backend.default_max_tokens(self.model.triton_name)
        return "length" if limit is not None and usage["completion_tokens"] >= limit else "stop"

    async def outcome(
        self, prompt: str, answer: choices.Answer, max_tokens: int | None
    ) -> tuple[dict[str, int], str]:
        """A finished choice's usage and finish reason."""
        usage = self.usage(prompt, answer.text, answer.last)
        return usage, await self.finish_reason(usage, max_tokens, answer.last)

    def generate(
        self, prompt: str, stream: bool, samplings: list[dict[str, Any]]
    ) -> AsyncGenerator[tuple[int, Piece | None], None]:
        """The runtime's responses for every choice, sent together (choices.merged)."""
        return choices.merged(
            [
                self.backend.generate(self.model.triton_name, prompt, stream, sampling)
                for sampling in samplings
            ]
        )

    async def complete(
        self, request: Request, prompt: str, samplings: list[dict[str, Any]]
    ) -> tuple[list[tuple[choices.Answer, str]], dict[str, int]]:
        """Each choice's whole answer with its finish reason, and the usage of them all."""
        work = choices.collect(self.generate(prompt, False, samplings), len(samplings))
        answers = await unless_disconnected(request, work)
        outcomes = [await self.outcome(prompt, answer, samplings[0].get("max_tokens")) for answer in answers]
        finished = [(answer, finish) for answer, (_, finish) in zip(answers, outcomes, strict=True)]
        return finished, choices.total_usage([usage for usage, _ in outcomes])

    async def stream(
        self,
        request: Request,
        prompt: str,
        samplings: list[dict[str, Any]],
        chunk: Chunk,
        include_usage: bool,
        first_text: str | None,
    ) -> StreamingResponse:
        """An SSE stream; every choice's first runtime response is awaited before the HTTP status is sent,
        so a request the runtime refuses gets its 4xx rather than an error inside a 200 stream. Each choice
        ends with its own finish_reason chunk; the usage chunk, if asked for, comes after all of them."""
        events = self.generate(prompt, True, samplings)
        # A client that leaves while the request waits for its first tokens cancels it too.
        first = await unless_disconnected(request, choices.first_events(events, len(samplings)))
        answers = [choices.Answer() for _ in samplings]
        usages: list[dict[str, int]] = []
        wants_logprobs = bool(samplings[0].get("logprobs"))

        async def event(index: int, piece: Piece | None) -> bytes:
            if piece is not None:
                answers[index].add(piece)
                return _sse(
                    chunk(index, piece.text, None, None, list(piece.logprobs) if wants_logprobs else None)
                )
            usage, finish = await self.outcome(prompt, answers[index], samplings[0].get("max_tokens"))
            usages.append(usage)
            return _sse(chunk(index, None, finish, None, None))

        async def body() -> AsyncIterator[bytes]:
            try:
                if first_text is not None:
                    for index in range(len(samplings)):
                        yield _sse(chunk(index, first_text, None, None, None))
                for index, piece in first:
                    yield await event(index, piece)
                async for index, piece in events:
                    yield await event(index, piece)
                if include_usage:
                    yield _sse(chunk(0, None, None, choices.total_usage(usages), None))
            except OpenAIError as exc:  # after the 200: the error goes into the stream, as OpenAI does
                yield _sse(exc.body())
            finally:
                # Closing the generator (client gone) cancels the Triton requests.
                await events.aclose()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    async def answer(
        self,
        request: Request,
        body: GenerationRequest,
        prompt: str,
        samplings: list[dict[str, Any]],
        kinds: tuple[str, str],
        stream_choice: Callable[[int], ChunkChoice],
        whole_choice: Callable[[int, choices.Answer, str], dict[str, Any]],
        first_text: str | None = None,
    ) -> Any:
        """The completion object, or the stream of its chunks, of `prompt` with one choice per sampling.
        `kinds`: the object's and the chunks' `object`; `whole_choice` makes a choice of the object from
        (its index, its answer, its finish reason); `stream_choice` makes, for an index, the function that
        makes that choice of each chunk; `first_text` leads each choice's stream (the echo)."""
        (kind, chunk_kind), created = kinds, int(time.time())
        ident = f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            made = [stream_choice(index) for index in range(len(samplings))]
            chunk = _chunks(ident, chunk_kind, created, body.model, include_usage, made)
            return await self.stream(request, prompt, samplings, chunk, include_usage, first_text)
        finished, usage = await self.complete(request, prompt, samplings)
        whole = [whole_choice(index, answer, finish) for index, (answer, finish) in enumerate(finished)]
        return _completion(ident, kind, created, body.model, whole, usage)

    async def completions(self, request: Request, body: CompletionRequest) -> Any:
        self.check_model(body.model, GENERATION_TASK, "/v1/completions")
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise invalid(
                    "prompt must be one string (token arrays and several prompts are not supported)", "prompt"
                )
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise invalid("prompt must be a string", "prompt")
        samplings = await self.samplings(body, body.max_tokens)
        echo = prompt if body.echo else ""

        def text_choice(index: int) -> ChunkChoice:
            offset = 0  # the echo's chunk, the first, counts the echo

            def choice(
                text: str | None, finish: str | None, tokens: list[dict[str, Any]] | None
            ) -> dict[str, Any]:
                nonlocal offset
                logprobs = None if tokens is None else completion_logprobs(tokens, offset)
                offset += len(text or "")
                return _choice(index, "text", text or "", finish, logprobs)

            return choice

        def whole_choice(index: int, answer: choices.Answer, finish: str) -> dict[str, Any]:
            logprobs = completion_logprobs(answer.tokens, len(echo)) if body.logprobs is not None else None
            return _choice(index, "text", echo + answer.text, finish, logprobs)

        kinds = ("text_completion", "text_completion")
        return await self.answer(
            request, body, prompt, samplings, kinds, text_choice, whole_choice, echo if body.echo else None
        )

    async def chat(self, request: Request, body: ChatCompletionRequest) -> Any:
        self.check_model(body.model, GENERATION_TASK, "/v1/chat/completions")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        samplings = await self.samplings(body, max_tokens)
        prompt = self.model.render_chat(body.messages)

        def delta_choice(index: int) -> ChunkChoice:
            sent_role = False

            def choice(
                text: str | None, finish: str | None, tokens: list[dict[str, Any]] | None
            ) -> dict[str, Any]:
                nonlocal sent_role
                delta: dict[str, Any] = {} if text is None else {"content": text}
                if not sent_role:
                    delta["role"] = "assistant"
                    sent_role = True
                logprobs = None if tokens is None else chat_logprobs(tokens)
                return _choice(index, "delta", delta, finish, logprobs)

            return choice

        def whole_choice(index: int, answer: choices.Answer, finish: str) -> dict[str, Any]:
            message = {"role": "assistant", "content": answer.text}
            return _choice(
                index, "message", message, finish, chat_logprobs(answer.tokens) if body.logprobs else None
            )

        kinds = ("chat.completion", "chat.completion.chunk")
        return await self.answer(request, body, prompt, samplings, kinds, delta_choice, whole_choice)


# The route groups spec.api enables (`--routes`); /v1/models and the health routes are always served.
ROUTE_GROUPS: dict[str, tuple[str, ...]] = {
    "openai": ("/v1/embeddings", "/v1/completions", "/v1/chat/completions"),
    "rerank": rerank.RERANK_PATHS,
    "classify": rerank.CLASSIFY_PATHS,
    "tei": tei.PATHS,
}


def create_app(
    model: ServedModel,
    backend: TritonBackend,
    routes: Collection[str] = tuple(ROUTE_GROUPS),
    api_keys: Path | None = None,
    token_arrays: Vocabulary | None = None,
    calls_in_flight: int | None = None,
) -> FastAPI:
    """The app serving the route groups in `routes`; with `api_keys` (a directory of key files) every route
    but the health checks needs one; `token_arrays`: whose ids /v1/embeddings' token arrays hold (default:
    the model's); `calls_in_flight`: embedding, classification and ranking calls to Triton in flight at
    once, beyond which requests wait and share the next call; beyond the model's instances only full calls
    go (coalescing.py; default: twice the model's instances; 0: no limit, no sharing)."""
    frontend = Frontend(model, backend, token_arrays, calls_in_flight)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await backend.close()

    app = FastAPI(
        title=f"modeldeploy OpenAI API: {model.model_id}", lifespan=lifespan, telemetry=NO_TELEMETRY
    )
    if api_keys is not None:
        require_api_keys(app, api_keys)

    @app.exception_handler(OpenAIError)
    async def openai_error(_request: Request, exc: OpenAIError) -> JSONAnswer:
        return _error_response(exc)

    @app.exception_handler(ClientGone)
    async def client_gone(_request: Request, _exc: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONAnswer:
        first = exc.errors()[0] if exc.errors() else {}
        param = _param_of(tuple(first.get("loc", ())))
        message = "; ".join(
            f"{_param_of(tuple(error.get('loc', ()))) or 'body'}: {error.get('msg', 'invalid')}"
            for error in exc.errors()
        )
        return _error_response(invalid(message or "invalid request body", param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONAnswer:
        code = "not_found" if exc.status_code == 404 else None
        return _error_response(OpenAIError(exc.status_code, str(exc.detail), code=code))

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [frontend.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != model.model_id:
            raise OpenAIError(
                404, f"the model {model_id!r} does not exist", param="model", code="model_not_found"
            )
        return frontend.model_card()

    # Answers are JSONAnswer objects already: FastAPI's own encoder would walk every float of an
    # embedding through jsonable_encoder first.
    @app.post("/v1/embeddings")
    async def embeddings(request: Request, body: EmbeddingRequest) -> Response:
        return _json(await unless_disconnected(request, frontend.embeddings(body)))

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        return _json(await frontend.completions(request, body))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        return _json(await frontend.chat(request, body))

    # Rerank, score and classify (rerank.py) and Hugging Face TEI's routes (tei.py), for the tasks they fit.
    rerank.register(app, frontend, unless_disconnected)
    tei.register(app, frontend)

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/health/ready")
    async def ready() -> JSONAnswer:
        # Follows Triton's own readiness: the sidecar is ready exactly when the model can answer.
        if await backend.ready(model.triton_name):
            return JSONAnswer({"status": "ready"})
        return JSONAnswer({"status": "triton not ready"}, status_code=503)

    disabled = {path for group, paths in ROUTE_GROUPS.items() if group not in routes for path in paths}
    app.router.routes[:] = [
        route for route in app.router.routes if getattr(route, "path", None) not in disabled
    ]
    return app
