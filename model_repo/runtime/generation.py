"""Continuous-batching text generation for the Triton Python backend (the `generator` role of model.py).

The builder copies this file (with generation_metrics.py, request_parsing.py, decoding.py, hf_adapter.py)
next to `model.py` in every text-generation model; model.py's generator role imports it. Like model.py it
must stay self-contained (torch, transformers, numpy only).

Engine: one thread runs its own iteration-level scheduler over the model's forward (decoding.py): new
requests are prefilled (reusing a cached prompt prefix where one matches) and join the running batch
between decoding steps; finished or cancelled ones leave it at once. The same thread chooses each row's
token with that request's controls and its own `torch.Generator`, checks stop strings and sends the
responses, so a token reaches its client without another thread's polling cadence in between.

Admission: at most `max_concurrent_sequences` requests decode together and at most `max_queued_requests`
more wait here; beyond that a request is refused at once with UNAVAILABLE.

The I/O contract (Triton's LLM convention, the same names as the vLLM backend and the OpenAI frontend):
inputs `text_input`, `stream`, `max_tokens`, `temperature`, `top_p`, `seed`, `stop`, `stop_words`,
`exclude_input_in_output`, `sampling_parameters` (JSON); outputs `text_output`, `num_input_tokens`,
`num_output_tokens`, and on the final response `finish_reason` (`stop` or `length`) and `stop_reason`
(the stop string or stop token id that matched; empty at EOS); `logprobs` (JSON) when asked for.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by tests that exercise the pure helpers
    pb_utils = None

from . import decoding, request_parsing
from .answer_text import AnswerText
from .decode_step import DecodeStep
from .generation_metrics import EngineProfile, GenerationMetrics
from .helpers import Result, ThreadTuner

Sampling = decoding.Sampling
# The request contract lives in request_parsing.py; these names are part of this module's interface.
GenerationRequestError = request_parsing.GenerationRequestError
SAMPLING_KEYS = request_parsing.SAMPLING_KEYS
build_sampling = request_parsing.build_sampling
checkpoint_defaults = request_parsing.checkpoint_defaults
default_max_concurrent_sequences = request_parsing.default_max_concurrent_sequences
find_stop = request_parsing.find_stop
fit_prompt = request_parsing.fit_prompt
parse_request = request_parsing.parse_request
parse_sampling_json = request_parsing.parse_sampling_json

# Seconds the engine waits for work when nothing is running: bounds how long a cancelled request that
# has not been scheduled yet keeps its place, and how stale the gauges get while idle.
IDLE_WAIT_S = 0.01
# Seconds between cancellation checks: each `is_cancelled()` is a round trip to the server (about 90 µs
# on a 2-core CPU), so they are not made every decoding step of every sequence: at 16 sequences, checks
# every 20 ms took 7.5% of the engine thread (bench/README.md, text generation). A cancelled request
# leaves within this and one step.
CANCEL_POLL_S = 0.1
# Seconds between metric updates: each is a round trip to the server too, so token counts are summed.
METRICS_PERIOD_S = 0.05


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


@dataclass
class Outgoing:
    """One response the engine posted for the sender thread: a piece of text (final when `finish` is
    set) or an error (always final)."""

    job: Job
    text: str
    output_tokens: int
    logprobs: list[Any]
    finish: tuple[str, str] | None = None
    error: tuple[str, str] | None = None  # (message, Triton code name)

    def then(self, later: Outgoing) -> Outgoing:
        """This piece and a later one of the same request as one response."""
        return Outgoing(
            self.job,
            self.text + later.text,
            later.output_tokens,
            self.logprobs + later.logprobs,
            later.finish,
        )


@dataclass
class Job:
    """One request on its way through the engine."""

    request_id: str
    request: Any
    sender: Any
    sampling: Sampling
    max_tokens: int
    arrived: float
    row: Any  # decoding.Row
    answer: AnswerText
    choices: list[Any] = field(default_factory=list)  # decoding.Choice per token, when logprobs are asked
    sent_chars: int = 0
    sent_tokens: int = 0
    first_token_at: float | None = None

    @property
    def tokens(self) -> list[int]:
        generated: list[int] = self.row.generated
        return generated


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
        prefix_cache_tokens: int | None = None,
        cpus: int | None = None,
    ) -> None:
        decoding.check_internals(model)  # refuses a transformers whose internals the batch relies on moved
        self.model = model
        self.tokenizer = tokenizer
        self.context = context
        self.max_sequences = max_sequences
        self.max_queued = max_queued
        self.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = default_max_tokens
        self.metrics = metrics
        self.log = log
        self.log_info: Callable[[str], None] = pb_utils.Logger.log_info if pb_utils is not None else log
        self.defaults = checkpoint_defaults(model.generation_config.to_diff_dict())
        checkpoint_eos = model.generation_config.eos_token_id
        if checkpoint_eos is None:
            checkpoint_eos = model.config.eos_token_id
        self.eos_ids = frozenset(
            []
            if checkpoint_eos is None
            else [checkpoint_eos]
            if isinstance(checkpoint_eos, int)
            else checkpoint_eos
        )
        # Prompts' keys and values kept for reuse: by default as many positions as four full contexts.
        budget = 4 * context if prefix_cache_tokens is None else prefix_cache_tokens
        self.prefixes = decoding.PrefixCache(budget) if budget > 0 else None
        # Decoding steps through their own forward where the model's layout allows (decode_step.py).
        self.decode_step, why = DecodeStep.attach(model)
        self.log_info(f"generation engine: {why}")
        self.batch = decoding.RunningBatch(model, self.decode_step)
        # On a CPU, each forward's thread count (of the CPUs this engine may use) is chosen from measured
        # passes: helpers.ThreadTuner.
        self.threads = ThreadTuner(cpus) if cpus is not None else None

        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._waiting: collections.deque[Job] = collections.deque()
        self._ids = itertools.count()
        self._last_cancel_check = 0.0
        self._last_metrics = 0.0
        self._unreported_tokens = 0
        # Histogram observations not yet sent: each is a message to Triton (about 0.1 ms), so they leave
        # after the step, not between a first token and its response.
        self._observations: list[tuple[Any, float]] = []
        self._reported_prefix = (0, 0)
        self._reported_counts = (-1, -1)
        self.profile = EngineProfile()
        self._outbox: queue.SimpleQueue[Outgoing | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="generation-sender", daemon=True)
        self._sender.start()
        self._thread = threading.Thread(target=self._run, name="generation-engine", daemon=True)
        self._thread.start()

    # -- called from Triton's execute --------------------------------------------------------------

    def submit(self, request: Any) -> None:
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        arrived = time.perf_counter()
        try:
            sampling = parse_request(request, self.max_tokens_limit, self.defaults)
            prompt_ids = self.tokenizer(sampling.prompt, add_special_tokens=True)["input_ids"]
            prompt_ids, max_tokens = fit_prompt(prompt_ids, sampling, self.context, self.default_max_tokens)
        except GenerationRequestError as exc:
            sender.send(_error(str(exc), "INVALID_ARG"), flags=final)
            return
        generator = None
        if not sampling.greedy:
            import torch

            generator = torch.Generator(device="cpu")
            generator.manual_seed(
                sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(8), "little")
            )
        row = decoding.Row(
            sampling, list(prompt_ids), self.eos_ids | frozenset(sampling.stop_token_ids), generator
        )
        answer = AnswerText(self.tokenizer)
        job = Job(f"r{next(self._ids)}", request, sender, sampling, max_tokens, arrived, row, answer)
        with self._lock:
            refused = len(self._waiting) >= self.max_queued
            if not refused:
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
        self._thread.join(timeout=10)
        self._outbox.put(None)
        self._sender.join(timeout=10)

    # -- the engine thread --------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        last_error = ""
        with torch.inference_mode():
            while not self._stopping.is_set():
                try:
                    self._wake.clear()
                    began = time.perf_counter()
                    self._reap_cancelled()
                    self.profile.seconds["cancel_checks"] += time.perf_counter() - began
                    self._start(self._admit())
                    if len(self.batch):
                        self._step()
                    else:
                        began = time.perf_counter()
                        self._wake.wait(IDLE_WAIT_S)
                        self.profile.seconds["idle"] += time.perf_counter() - began
                    began = time.perf_counter()
                    self._update_metrics()
                    self.profile.seconds["metrics"] += time.perf_counter() - began
                except Exception as exc:  # one failing step fails its requests, not the engine
                    if repr(exc) != last_error:  # a persisting fault is logged once, not every step
                        self.log(f"generation engine: {exc!r}")
                        last_error = repr(exc)
                    for job in list(self.batch.rows):
                        self._send_error(job, f"generation failed: {exc}", "INTERNAL")
                    self.batch = decoding.RunningBatch(self.model, self.decode_step)

    def _admit(self) -> list[Job]:
        with self._lock:
            room = self.max_sequences - len(self.batch)
            admitted = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        return admitted

    def _start(self, jobs: list[Job]) -> None:
        """Prefill new requests in groups; each joins the batch unless its first token already ends it."""
        seconds = self.profile.seconds
        for group in decoding.plan_prefill(self.model, [job.row.prompt_ids for job in jobs], self.prefixes):
            began = time.perf_counter()
            members = [jobs[index] for index in group.indices]
            tokens = sum(len(prompt) - group.reused for prompt in group.prompts)
            try:
                logits, tensors = self._forward(
                    tokens, functools.partial(decoding.prefill_group, self.model, group, self.prefixes)
                )
            except Exception as exc:
                for job in members:
                    self._send_error(job, f"generation failed: {exc}", "INTERNAL")
                continue
            choices = decoding.choose_rows(logits, [job.row for job in members])
            chosen = time.perf_counter()
            seconds["prefill"] += chosen - began
            queued = [began - job.arrived for job in members]
            self.profile.prefilled(queued, chosen - began)
            if self.metrics is not None:
                for wait in queued:
                    self._observations.append((self.metrics.queue_time, wait))
                    self._observations.append((self.metrics.prefill_time, chosen - began))
            joining = [
                (job, rows, choice.token)
                for job, rows, choice in zip(members, tensors, choices, strict=True)
                if not self._advance(job, choice)
            ]
            responded = time.perf_counter()
            seconds["respond"] += responded - chosen
            self.batch.join_many(joining)
            seconds["join_leave"] += time.perf_counter() - responded

    def _forward(self, tokens: int, forward: Callable[[], Result]) -> Result:
        return forward() if self.threads is None else self.threads.run(tokens, forward)

    def _step(self) -> None:
        seconds = self.profile.seconds
        began = time.perf_counter()
        logits = self._forward(len(self.batch), self.batch.step)
        if logits.device.type == "cuda":  # the forward's time, not the launch's
            import torch

            torch.cuda.synchronize(logits.device)
        forwarded = time.perf_counter()
        choices = decoding.choose_rows(logits, [job.row for job in self.batch.rows])
        chosen = time.perf_counter()
        gone = set()
        for index, (job, choice) in enumerate(zip(self.batch.rows, choices, strict=True)):
            if self._advance(job, choice):
                gone.add(index)
            else:
                self.batch.pending[index] = choice.token
        responded = time.perf_counter()
        self.profile.steps += 1
        self.profile.rows += len(self.batch)
        self.batch.leave(gone)
        left = time.perf_counter()
        seconds["forward"] += forwarded - began
        seconds["choose"] += chosen - forwarded
        seconds["respond"] += responded - chosen
        seconds["join_leave"] += left - responded
        line = self.profile.line()
        if line is not None:
            if self.threads is not None:
                line += f"; threads by width group: {self.threads.choices()}"
            self.log_info(line)

    def _advance(self, job: Job, choice: Any) -> bool:
        """Take one generated token: respond as the request asked; True when the request is finished."""
        job.row.add(choice.token)
        if job.sampling.logprobs:
            job.choices.append(choice)
        self._unreported_tokens += 1
        if job.first_token_at is None:
            job.first_token_at = time.perf_counter()
            if self.metrics is not None:
                self._observations.append((self.metrics.ttft, job.first_token_at - job.arrived))
        finish: tuple[str, str] | None = None
        if choice.token in job.row.end_ids:
            finish = ("stop", "" if choice.token in self.eos_ids else str(choice.token))
        elif len(job.tokens) >= job.max_tokens:
            finish = ("length", "")
        if not (job.sampling.stream or job.sampling.stop or finish):
            return False  # nothing to send or check before the end: skip decoding
        searched = max(0, len(job.answer.text) - max(map(len, job.sampling.stop), default=0) + 1)
        job.answer.add(job.tokens, final=finish is not None)
        text = job.answer.text
        # Earlier text held no stop string: only one ending in the new text can start after `searched`.
        stop_at = find_stop(text, job.sampling.stop, searched)
        if stop_at is not None:
            index, matched = stop_at
            self._finish(job, text[:index], ("stop", matched))
            return True
        if finish is not None:
            self._finish(job, text, finish)
            return True
        if job.sampling.stream:
            self._stream_ready_text(job, text)
        return False

    def _stream_ready_text(self, job: Job, text: str) -> None:
        # The text never ends in a partial character before the last token (AnswerText waits for its last
        # byte); what could still become a stop string is held back.
        ready = len(text)
        if job.sampling.stop:
            ready = min(ready, len(text) - max(len(stop) for stop in job.sampling.stop) + 1)
        if ready > job.sent_chars:
            self._post(job, text[job.sent_chars : ready])
            job.sent_chars = ready

    def _post(self, job: Job, text: str, finish: tuple[str, str] | None = None) -> None:
        """Hand one response to the sender thread (with the token count and log-probabilities as of now)."""
        fresh = job.choices[job.sent_tokens :] if job.sampling.logprobs else []
        job.sent_tokens = len(job.choices)
        self._outbox.put(Outgoing(job, text, len(job.tokens), fresh, finish))

    def _finish(self, job: Job, text: str, finish: tuple[str, str]) -> None:
        if self.metrics is not None and job.first_token_at is not None:
            now = time.perf_counter()
            self._observations.append((self.metrics.e2e, now - job.arrived))
            if len(job.tokens) > 1:
                per_token = (now - job.first_token_at) / (len(job.tokens) - 1)
                self._observations.append((self.metrics.time_per_output_token, per_token))
        # A client that has its answer sees its tokens counted and its request timed: both are brought up to
        # date first.
        self._flush_tokens()
        self._flush_observations()
        if job.sampling.stream:
            self._post(job, text[job.sent_chars :], finish)
        else:
            if not job.sampling.exclude_input_in_output:
                text = job.sampling.prompt + text
            self._post(job, text, finish)

    def _send_error(self, job: Job, message: str, code: str) -> None:
        self._outbox.put(Outgoing(job, "", len(job.tokens), [], None, (message, code)))

    # -- the sender thread ------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        """Send what the engine posted. Everything waiting is taken at once and a request's pieces are
        merged into one response, so under load a client gets several tokens per response instead of
        the engine paying one response per token; alone, each token still leaves at once."""
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        running = True
        while running:
            items = [self._outbox.get()]
            while True:
                try:
                    items.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            merged: dict[int, Outgoing] = {}
            for item in items:
                if item is None:
                    running = False
                    continue
                key = id(item.job)
                pending = merged.get(key)
                if pending is not None and item.error is None and pending.finish is None:
                    merged[key] = pending.then(item)
                else:
                    if pending is not None:  # a piece before an error goes first
                        self._send(merged.pop(key), final)
                    merged[key] = item
            for item in merged.values():
                self._send(item, final)

    def _send(self, item: Outgoing, final_flag: int) -> None:
        began = time.perf_counter()
        try:
            self._send_now(item, final_flag)
        except Exception as exc:  # a client gone mid-send must not stop the others' responses
            self.log(f"generation: sending a response failed: {exc!r}")
        self.profile.seconds["sender_thread"] += time.perf_counter() - began

    def _send_now(self, item: Outgoing, final_flag: int) -> None:
        if item.error is not None:
            item.job.sender.send(_error(*item.error), flags=final_flag)
            return
        job = item.job
        tensors = [
            pb_utils.Tensor("text_output", np.array([item.text.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor("num_input_tokens", np.array([len(job.row.prompt_ids)], dtype=np.int32)),
            pb_utils.Tensor("num_output_tokens", np.array([item.output_tokens], dtype=np.int32)),
        ]
        if item.finish is not None:
            for name, value in zip(("finish_reason", "stop_reason"), item.finish, strict=True):
                tensors.append(pb_utils.Tensor(name, np.array([value.encode("utf-8")], dtype=np.object_)))
        if job.sampling.logprobs:
            logprobs = self._logprobs_json(item.logprobs)
            tensors.append(pb_utils.Tensor("logprobs", np.array([logprobs], dtype=np.object_)))
        response = pb_utils.InferenceResponse(output_tensors=tensors)
        if item.finish is not None:
            job.sender.send(response, flags=final_flag)
        else:
            job.sender.send(response)

    def _logprobs_json(self, choices: list[Any]) -> bytes:
        """Per token: id, text, log-probability and the top alternatives (OpenAI's and vLLM's content)."""
        decode = self.tokenizer.decode
        items = [
            {
                "token_id": choice.token,
                "token": decode([choice.token]),
                "logprob": choice.logprob,
                "top_logprobs": [
                    {"token_id": token, "token": decode([token]), "logprob": value}
                    for token, value in choice.top
                ],
            }
            for choice in choices
        ]
        return json.dumps(items, separators=(",", ":")).encode("utf-8")

    def _reap_cancelled(self) -> None:
        now = time.perf_counter()
        if now - self._last_cancel_check < CANCEL_POLL_S:
            return
        self._last_cancel_check = now
        gone = {index for index, job in enumerate(self.batch.rows) if job.request.is_cancelled()}
        for index in gone:
            self._send_error(self.batch.rows[index], "the request was cancelled", "CANCELLED")
        self.batch.leave(gone)
        with self._lock:
            cancelled = [job for job in self._waiting if job.request.is_cancelled()]
            for job in cancelled:
                self._waiting.remove(job)
        for job in cancelled:
            self._send_error(job, "the request was cancelled", "CANCELLED")

    def _flush_observations(self) -> None:
        for histogram, seconds in self._observations:
            histogram.observe(seconds)
        self._observations.clear()

    def _flush_tokens(self) -> None:
        if self.metrics is not None and self._unreported_tokens:
            self.metrics.tokens.increment(self._unreported_tokens)
            self._unreported_tokens = 0

    def _update_metrics(self) -> None:
        """Counters and the KV gauge every METRICS_PERIOD_S; the waiting and running gauges as soon as
        they change (a request joined or left), so they never lag the responses clients already have."""
        if self.metrics is None:
            return
        self._flush_observations()
        with self._lock:
            counts = (len(self._waiting), len(self.batch))
        now = time.perf_counter()
        if counts == self._reported_counts and now - self._last_metrics < METRICS_PERIOD_S:
            return
        self._last_metrics = now
        self._reported_counts = counts
        self._flush_tokens()
        if self.prefixes is not None:
            hits, reused = self.prefixes.hits, self.prefixes.reused_tokens
            if (hits, reused) != self._reported_prefix:
                self.metrics.prefix_hits.increment(hits - self._reported_prefix[0])
                self.metrics.prefix_tokens.increment(reused - self._reported_prefix[1])
                self._reported_prefix = (hits, reused)
        self.metrics.waiting.set(counts[0])
        self.metrics.running.set(counts[1])
        self.metrics.kv_cache.set(self.batch.positions_held / (self.max_sequences * self.context))
