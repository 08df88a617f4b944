"""Continuous-batching text generation for the Triton Python backend (the `generator` role of model.py).

The builder copies this file next to `model.py` in every text-generation model; model.py loads it by path.
Like model.py it must stay self-contained (torch, transformers, numpy only).

Engine: transformers' own continuous-batching manager (paged attention, iteration-level scheduling: new
requests join the running batch between decoding steps, finished or cancelled ones leave it at once). Two
things it lacks for a server are added here rather than re-implementing the scheduler:

- per-request sampling: the manager decides greedy-or-sample once for all requests and draws from one
  global generator, so a seed cannot be honoured per request. Its sampling step is replaced by one that
  picks each row's token with that request's own settings and `torch.Generator` (argmax when greedy, which
  is what the manager does itself);
- admission: the manager's own queue blocks its caller for 10 s when full and drains into an unbounded
  waiting list, so at most `max_concurrent_sequences` requests are handed to it (its KV cache is sized to
  hold them all at full context) and at most `max_queued_requests` more wait here; beyond that a request
  is refused at once with UNAVAILABLE.

One dispatcher thread turns the manager's per-token outputs into Triton responses, applies stop strings,
polls cancellation, admits waiting requests and updates the metrics.

The I/O contract (Triton's LLM convention, the same names as the vLLM backend and the OpenAI frontend):
inputs `text_input`, `stream`, `max_tokens`, `temperature`, `top_p`, `seed`, `stop`,
`exclude_input_in_output`, `sampling_parameters` (JSON); outputs `text_output`, `num_input_tokens`,
`num_output_tokens`.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by tests that exercise the pure helpers
    pb_utils = None

# Parameters a request may set in `sampling_parameters` (JSON) or as request parameters (the JSON body's
# `parameters` on /generate); the individual input tensors of the same names win over both.
SAMPLING_KEYS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stop_token_ids",
    "truncate_prompt_tokens",
)
REQUEST_PARAMETER_KEYS = (*SAMPLING_KEYS, "stream", "exclude_input_in_output")
MAX_SEED = 2**64 - 1
MAX_STOP_STRINGS = 16
# Seconds between the dispatcher's checks when no token arrives: bounds how long a cancelled request that
# has not been scheduled yet keeps its place, and how stale the gauges get while idle.
DISPATCH_POLL_S = 0.01
# Seconds between cancellation checks: each `is_cancelled()` is a round trip to the server, so they are
# not made every decoding step of every sequence; a cancelled request still leaves within ~one step.
CANCEL_POLL_S = 0.02
TTFT_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class GenerationRequestError(ValueError):
    """A client mistake in one generation request (Triton INVALID_ARG: HTTP 400, gRPC INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class Sampling:
    """What one request asked for, validated."""

    prompt: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    truncate_prompt_tokens: int | None = None
    stream: bool = False
    exclude_input_in_output: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# ---------------------------------------------------------------------------------------------------
# Pure validation (no Triton, no torch): every rule names the input and what it must be.
# ---------------------------------------------------------------------------------------------------


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise GenerationRequestError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, (float, np.floating)) and (not math.isfinite(value) or value != int(value)):
        raise GenerationRequestError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise GenerationRequestError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise GenerationRequestError(f"{name} must be a finite number, got {value!r}")
    return number


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise GenerationRequestError(f"{name} must be true or false, got {value!r}")


def _as_strings(name: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise GenerationRequestError(f"{name} must be a string or a list of strings, got {value!r}")
    if any(not item for item in items):
        raise GenerationRequestError(f"{name} must not contain an empty string")
    if len(items) > MAX_STOP_STRINGS:
        raise GenerationRequestError(
            f"{name} holds {len(items)} strings; at most {MAX_STOP_STRINGS} are allowed"
        )
    return tuple(items)


def parse_sampling_json(text: str) -> dict[str, Any]:
    """The `sampling_parameters` input: a JSON object whose keys are all in SAMPLING_KEYS."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GenerationRequestError(f"sampling_parameters must be a JSON object: {exc}") from exc
    if not isinstance(parsed, dict):
        raise GenerationRequestError(
            f"sampling_parameters must be a JSON object, got {type(parsed).__name__}"
        )
    check_known_keys("sampling_parameters", parsed, SAMPLING_KEYS)
    return parsed


def check_known_keys(where: str, values: Mapping[str, Any], accepted: tuple[str, ...]) -> None:
    unknown = sorted(set(values) - set(accepted))
    if unknown:
        raise GenerationRequestError(
            f"{where} has unknown field(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}"
        )


# Numeric sampling settings: name -> (parser, whether a value is allowed, the rule an error states).
_NUMERIC_SETTINGS: dict[str, tuple[Callable[[str, Any], float], Callable[[float], bool], str]] = {
    "temperature": (_as_float, lambda value: value >= 0, "must be >= 0 (0 means greedy)"),
    "top_p": (_as_float, lambda value: 0 < value <= 1, "must be in (0, 1]"),
    "top_k": (_as_int, lambda value: value >= 0, "must be >= 0 (0 means no limit)"),
    "seed": (_as_int, lambda value: 0 <= value <= MAX_SEED, "must be between 0 and 2**64-1"),
}


def build_sampling(prompt: str, values: Mapping[str, Any], max_tokens_limit: int) -> Sampling:
    """Validate the merged parameters of one request (inputs over sampling_parameters over parameters)."""
    if not prompt.strip():
        raise GenerationRequestError("text_input must not be empty")
    settings: dict[str, Any] = {"prompt": prompt}
    if values.get("max_tokens") is not None:
        max_tokens = _as_int("max_tokens", values["max_tokens"])
        if max_tokens < 1:
            raise GenerationRequestError(f"max_tokens must be at least 1, got {max_tokens}")
        if max_tokens > max_tokens_limit:
            raise GenerationRequestError(
                f"max_tokens {max_tokens} exceeds this model's maximum of {max_tokens_limit} tokens"
            )
        settings["max_tokens"] = max_tokens
    for name, (parse, valid, rule) in _NUMERIC_SETTINGS.items():
        if values.get(name) is not None:
            value = parse(name, values[name])
            if not valid(value):
                raise GenerationRequestError(f"{name} {rule}, got {value}")
            settings[name] = value
    if values.get("stop") is not None:
        settings["stop"] = _as_strings("stop", values["stop"])
    if values.get("stop_token_ids") is not None:
        ids = values["stop_token_ids"]
        if not isinstance(ids, (list, tuple)):
            raise GenerationRequestError(f"stop_token_ids must be a list of token ids, got {ids!r}")
        settings["stop_token_ids"] = tuple(_as_int("stop_token_ids", item) for item in ids)
        if any(token < 0 for token in settings["stop_token_ids"]):
            raise GenerationRequestError("stop_token_ids must not be negative")
    if values.get("truncate_prompt_tokens") is not None:
        keep = _as_int("truncate_prompt_tokens", values["truncate_prompt_tokens"])
        if keep < 1:
            raise GenerationRequestError(f"truncate_prompt_tokens must be at least 1, got {keep}")
        settings["truncate_prompt_tokens"] = keep
    for name in ("stream", "exclude_input_in_output"):
        if values.get(name) is not None:
            settings[name] = _as_bool(name, values[name])
    return Sampling(**settings)


def fit_prompt(
    prompt_ids: list[int], sampling: Sampling, context: int, default_max_tokens: int
) -> tuple[list[int], int]:
    """The prompt to run and how many tokens may follow it within the context.

    A prompt is never cut silently: a too-long one is refused naming both lengths unless the request set
    `truncate_prompt_tokens` (keep that many of its last tokens). `max_tokens` clamps to the room left;
    a prompt that leaves no room is refused.
    """
    if sampling.truncate_prompt_tokens is not None:
        prompt_ids = prompt_ids[-sampling.truncate_prompt_tokens :]
    if len(prompt_ids) >= context:
        raise GenerationRequestError(
            f"text_input is {len(prompt_ids)} tokens but this model's context is {context} tokens, which "
            "must also hold at least one generated token; shorten the prompt or set "
            "sampling_parameters.truncate_prompt_tokens"
        )
    room = context - len(prompt_ids)
    wanted = sampling.max_tokens if sampling.max_tokens is not None else default_max_tokens
    return prompt_ids, min(wanted, room)


def find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index where the earliest stop string starts in `text`, or None."""
    hits = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    return min(hits) if hits else None


def default_max_concurrent_sequences(
    device: str, kv_bytes_per_token: int, context: int, budget_bytes: int | None = None
) -> int:
    """Sequences a model serves at once by default: a device-typical batch, capped by a KV-cache budget.

    On a CPU decoding speed stops growing past a few dozen sequences while each one's full-context KV cache
    stays reserved; a GPU profits from far wider batches. The budget keeps the reserved cache modest.
    """
    typical, budget = (64, 8 << 30) if device == "gpu" else (16, 2 << 30)
    budget = budget if budget_bytes is None else budget_bytes
    fits = budget // max(1, kv_bytes_per_token * context)
    return int(max(1, min(typical, fits)))


# ---------------------------------------------------------------------------------------------------
# Per-request sampling inside the manager's step.
# ---------------------------------------------------------------------------------------------------


def sample_rows(scores: Any, settings: list[tuple[Sampling, Any] | None]) -> Any:
    """Next token of each row of [rows, vocab] scores with its request's own settings and generator.

    Greedy rows take the argmax, like `generate(do_sample=False)`; sampled rows apply temperature, top-k
    and top-p (nucleus) and draw from their request's `torch.Generator`, so a seed reproduces a request's
    tokens whatever else shares the batch.
    """
    import torch

    tokens = torch.argmax(scores, dim=-1)
    for row, entry in enumerate(settings):
        if entry is None or entry[0].greedy:
            continue
        sampling, generator = entry
        logits = scores[row].float() / sampling.temperature
        if 0 < sampling.top_k < logits.shape[-1]:
            threshold = torch.topk(logits, sampling.top_k).values[-1]
            logits = logits.masked_fill(logits < threshold, -math.inf)
        probabilities = torch.softmax(logits, dim=-1)
        if sampling.top_p < 1:
            ordered, order = torch.sort(probabilities, descending=True)
            cumulative = torch.cumsum(ordered, dim=-1)
            drop = cumulative - ordered >= sampling.top_p  # keep the smallest prefix reaching top_p
            ordered = ordered.masked_fill(drop, 0.0)
            probabilities = torch.zeros_like(probabilities).scatter(0, order, ordered)
        choice = torch.multinomial(probabilities.cpu(), 1, generator=generator)
        tokens[row] = choice.to(tokens.device)[0]
    return tokens


# ---------------------------------------------------------------------------------------------------
# Triton glue.
# ---------------------------------------------------------------------------------------------------


def _error(message: str, code_name: str) -> Any:
    """An error response with Triton's status code, which also leads the message: Triton's gRPC streaming
    protocol (ModelStreamInferResponse) carries only a message, so a streaming client reads the code there."""
    return pb_utils.InferenceResponse(
        output_tensors=[],
        error=pb_utils.TritonError(f"[{code_name}] {message}", getattr(pb_utils.TritonError, code_name)),
    )


def _input_values(request: Any, name: str) -> Any | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)


def _scalar(request: Any, name: str) -> Any | None:
    values = _input_values(request, name)
    if values is None:
        return None
    if values.size != 1:
        raise GenerationRequestError(f"{name} must hold exactly one value, got {values.size}")
    return values[0].item() if hasattr(values[0], "item") else values[0]


def _utf8(name: str, item: Any) -> str:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GenerationRequestError(f"{name} must be UTF-8 text") from exc
    return str(item)


def parse_request(request: Any, max_tokens_limit: int) -> Sampling:
    """Read and validate one Triton request (raises GenerationRequestError)."""
    texts = _input_values(request, "text_input")
    if texts is None:
        raise GenerationRequestError("input text_input is required")
    if texts.size != 1:
        raise GenerationRequestError(f"text_input must hold exactly one prompt, got {texts.size}")
    prompt = _utf8("text_input", texts[0])

    values: dict[str, Any] = {}
    raw_parameters = request.parameters() if hasattr(request, "parameters") else "{}"
    parameters = json.loads(raw_parameters) if raw_parameters else {}
    check_known_keys("request parameters", parameters, REQUEST_PARAMETER_KEYS)
    values.update(parameters)
    sampling_json = _input_values(request, "sampling_parameters")
    if sampling_json is not None:
        if sampling_json.size != 1:
            raise GenerationRequestError("sampling_parameters must hold exactly one JSON string")
        values.update(parse_sampling_json(_utf8("sampling_parameters", sampling_json[0])))
    for name in ("max_tokens", "temperature", "top_p", "seed", "stream", "exclude_input_in_output"):
        value = _scalar(request, name)
        if value is not None:
            values[name] = value
    stops = _input_values(request, "stop")
    if stops is not None:
        values["stop"] = [_utf8("stop", item) for item in stops]
    return build_sampling(prompt, values, max_tokens_limit)


class GenerationMetrics:
    """The runtime's Prometheus metrics on Triton's metrics port (labels: model, version)."""

    def __init__(self, model: str, version: str) -> None:
        labels = {"model": model, "version": version}
        family = pb_utils.MetricFamily
        # Triton invalidates a Metric once its MetricFamily is garbage-collected: keep both.
        self.families = {
            key: family(name=f"modeldeploy_generation_{key}", description=description, kind=kind)
            for key, description, kind in (
                ("requests_waiting", "Generation requests waiting for a sequence slot", family.GAUGE),
                ("sequences_running", "Sequences in the continuous batch (prefill or decode)", family.GAUGE),
                ("kv_cache_utilization", "Share of the paged KV cache in use (0..1)", family.GAUGE),
                ("tokens_total", "Tokens generated", family.COUNTER),
                (
                    "time_to_first_token_seconds",
                    "Seconds from arrival to first generated token",
                    family.HISTOGRAM,
                ),
            )
        }
        self.waiting = self.families["requests_waiting"].Metric(labels=labels)
        self.running = self.families["sequences_running"].Metric(labels=labels)
        self.kv_cache = self.families["kv_cache_utilization"].Metric(labels=labels)
        self.tokens = self.families["tokens_total"].Metric(labels=labels)
        self.ttft = self.families["time_to_first_token_seconds"].Metric(labels=labels, buckets=TTFT_BUCKETS_S)


@dataclass
class Job:
    """One request on its way through the engine."""

    request_id: str
    request: Any
    sender: Any
    sampling: Sampling
    prompt_ids: list[int]
    max_tokens: int
    arrived: float
    generator: Any = None
    tokens: list[int] = field(default_factory=list)
    sent_chars: int = 0
    first_token_at: float | None = None


class GenerationEngine:
    """Continuous batching for one model instance; `submit` never blocks, responses come from a thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        context: int,
        max_sequences: int,
        max_queued: int,
        max_tokens_limit: int,
        default_max_tokens: int,
        metrics: GenerationMetrics | None,
        log: Callable[[str], None],
    ) -> None:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.tokenizer = tokenizer
        self.context = context
        self.max_sequences = max_sequences
        self.max_queued = max_queued
        self.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = default_max_tokens
        self.metrics = metrics
        self.log = log
        checkpoint_eos = model.generation_config.eos_token_id
        if checkpoint_eos is None:
            checkpoint_eos = model.config.eos_token_id
        self.eos_ids = (
            []
            if checkpoint_eos is None
            else [checkpoint_eos]
            if isinstance(checkpoint_eos, int)
            else list(checkpoint_eos)
        )
        # Pages as small as the context allows keep short sequences from reserving much; the cache holds
        # every admitted sequence at full context, so the scheduler never has to evict one.
        page = 32 if context <= 4096 else 256
        pages_per_sequence = -(-context // page) + 1
        config = ContinuousBatchingConfig(
            page_size=page,
            num_blocks=max_sequences * pages_per_sequence,
            max_batch_tokens=context + max_sequences,
            max_requests_per_batch=max_sequences,
            allow_block_sharing=False,
            use_cuda_graph=False,  # the per-request sampling step runs Python per row
            use_async_batching=False,  # sampling maps rows to requests through the current batch
            scheduler_type="fifo",
        )
        # Greedy in the manager; `sample_rows` replaces its sampling step. No logits processors: the
        # checkpoint's own (repetition penalties etc.) would apply to every request alike.
        generation_config = GenerationConfig(do_sample=False, max_new_tokens=default_max_tokens)  # type: ignore[no-untyped-call]
        self.manager = model.init_continuous_batching(
            generation_config=generation_config, continuous_batching_config=config
        )
        self.manager.warmup()  # creates the batch processor here, so its sampling step can be replaced
        processor = self.manager.batch_processor
        self._io = processor.inputs_and_outputs
        self._cache = processor.cache
        processor.model_runner._sample = self._sample

        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: dict[str, Job] = {}
        self._ids = itertools.count()
        self._last_cancel_check = 0.0
        self.manager.start()
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="generation-dispatch", daemon=True
        )
        self._dispatcher.start()

    # -- called from Triton's execute --------------------------------------------------------------

    def submit(self, request: Any) -> None:
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        arrived = time.perf_counter()
        try:
            sampling = parse_request(request, self.max_tokens_limit)
            prompt_ids = self.tokenizer(sampling.prompt, add_special_tokens=True)["input_ids"]
            prompt_ids, max_tokens = fit_prompt(prompt_ids, sampling, self.context, self.default_max_tokens)
        except GenerationRequestError as exc:
            sender.send(_error(str(exc), "INVALID_ARG"), flags=final)
            return
        job = Job(f"r{next(self._ids)}", request, sender, sampling, list(prompt_ids), max_tokens, arrived)
        if not sampling.greedy:
            import torch

            job.generator = torch.Generator(device="cpu")
            job.generator.manual_seed(
                sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(8), "little")
            )
        with self._lock:
            if len(self._waiting) >= self.max_queued:
                refused = True
            else:
                refused = False
                self._waiting.append(job)
        if refused:
            sender.send(
                _error(
                    f"the generation queue is full ({self.max_sequences} sequences running, "
                    f"{self.max_queued} waiting); retry later",
                    "UNAVAILABLE",
                ),
                flags=final,
            )
            return
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._dispatcher.join(timeout=10)
        self.manager.stop(block=True, timeout=10)

    # -- the manager's sampling step (generation thread) -------------------------------------------

    def _sample(self, scores: Any, output_ids: Any) -> None:
        rows = [future.state.request_id for future in self._io.requests_in_batch if future.has_new_token]
        with self._lock:
            jobs = [self._running.get(request_id) for request_id in rows]
        settings = [None if job is None else (job.sampling, job.generator) for job in jobs]
        tokens = sample_rows(scores[0], settings)
        output_ids[0, : tokens.shape[0]].copy_(tokens)

    # -- dispatcher thread --------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        last_error = ""
        while not self._stopping.is_set():
            try:
                self._admit()
                result = self.manager.get_result(timeout=DISPATCH_POLL_S)
                while result is not None:
                    self._on_result(result)
                    result = self.manager.get_result(timeout=0)
                self._reap_cancelled()
                self._update_gauges()
            except Exception as exc:  # the loop must outlive any one bad result
                if repr(exc) != last_error:  # a persisting fault is logged once, not every poll
                    self.log(f"generation dispatcher: {exc!r}")
                    last_error = repr(exc)
                time.sleep(DISPATCH_POLL_S)

    def _admit(self) -> None:
        while True:
            with self._lock:
                if not self._waiting or len(self._running) >= self.max_sequences:
                    return
                job = self._waiting.popleft()
                self._running[job.request_id] = job
            accepted = self.manager.add_request(
                job.prompt_ids,
                request_id=job.request_id,
                max_new_tokens=job.max_tokens,
                streaming=True,
                eos_token_id=[*self.eos_ids, *job.sampling.stop_token_ids] or -1,
            )
            if accepted is None:  # the manager stopped (e.g. after a fatal error): fail, don't hang
                self._finish(job, error="the generation engine is not running")

    def _on_result(self, result: Any) -> None:
        with self._lock:
            job = self._running.get(result.request_id)
        if job is None:  # cancelled or stopped already
            return
        if result.error is not None or str(getattr(result.status, "name", "")) == "FAILED":
            self._finish(job, error=f"generation failed: {result.error}")
            return
        fresh = len(result.generated_tokens) - len(job.tokens)
        if fresh > 0:
            if job.first_token_at is None:
                job.first_token_at = time.perf_counter()
                if self.metrics is not None:
                    self.metrics.ttft.observe(job.first_token_at - job.arrived)
            if self.metrics is not None:
                self.metrics.tokens.increment(fresh)
        job.tokens = list(result.generated_tokens)
        if not (job.sampling.stream or job.sampling.stop or result.is_finished()):
            return  # nothing to send or check before the end: skip decoding
        text = self._text(job)
        stop_at = find_stop(text, job.sampling.stop)
        if stop_at is not None:
            self.manager.cancel_request(job.request_id)
            self._finish(job, text=text[:stop_at])
        elif result.is_finished():
            self._finish(job, text=text)
        elif job.sampling.stream:
            self._stream_ready_text(job, text)

    def _text(self, job: Job) -> str:
        text: str = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
        return text

    def _stream_ready_text(self, job: Job, text: str) -> None:
        # Hold back a trailing partial character (U+FFFD until its last byte arrives) and anything that
        # could still become a stop string.
        ready = len(text.rstrip("\ufffd"))
        if job.sampling.stop:
            ready = min(ready, len(text) - max(len(stop) for stop in job.sampling.stop) + 1)
        if ready > job.sent_chars:
            job.sender.send(self._response(job, text[job.sent_chars : ready]))
            job.sent_chars = ready

    def _response(self, job: Job, text: str) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_)),
                pb_utils.Tensor("num_input_tokens", np.array([len(job.prompt_ids)], dtype=np.int32)),
                pb_utils.Tensor("num_output_tokens", np.array([len(job.tokens)], dtype=np.int32)),
            ]
        )

    def _finish(self, job: Job, text: str = "", error: str | None = None) -> None:
        with self._lock:
            self._running.pop(job.request_id, None)
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if error is not None:
            job.sender.send(_error(error, "INTERNAL"), flags=final)
        elif job.sampling.stream:
            rest = text[job.sent_chars :]
            if rest:
                job.sender.send(self._response(job, rest), flags=final)
            else:
                job.sender.send(flags=final)
        else:
            if not job.sampling.exclude_input_in_output:
                text = job.sampling.prompt + text
            job.sender.send(self._response(job, text), flags=final)
        self._wake.set()

    def _reap_cancelled(self) -> None:
        now = time.perf_counter()
        if now - self._last_cancel_check < CANCEL_POLL_S:
            return
        self._last_cancel_check = now
        with self._lock:
            jobs = [*self._running.values(), *self._waiting]
        for job in jobs:
            if not job.request.is_cancelled():
                continue
            with self._lock:
                if job in self._waiting:
                    self._waiting.remove(job)
                running = self._running.pop(job.request_id, None) is not None
            if running:
                self.manager.cancel_request(job.request_id)
            job.sender.send(
                _error("the request was cancelled", "CANCELLED"),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )

    def _update_gauges(self) -> None:
        if self.metrics is None:
            return
        with self._lock:
            waiting, running = len(self._waiting), len(self._running)
        self.metrics.waiting.set(waiting)
        self.metrics.running.set(running)
        self.metrics.kv_cache.set(
            max(0.0, min(1.0, 1.0 - float(self._cache.compute_free_capacity(relative=True))))
        )
