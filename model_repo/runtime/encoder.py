"""The `encoder` role of the Python-backend runtime (the `python` format of the encoder tasks): tokenizer,
forward passes planned by length and post-processing in one model. Text pairs and cross-encoder scores are
in ranking.py, copied beside it for text-classification and text-ranking.
"""

from __future__ import annotations

import importlib
import math
import time
from typing import Any

import numpy as np

from .helpers import (
    Array,
    StageProfile,
    ThreadTuner,
    fit_pass_overhead,
    pad_batch,
    plan_length_groups,
    pool_hidden_states,
)
from .serving import (
    DecodedRequests,
    Settings,
    TaskOutputs,
    error_response,
    load_model,
    response,
    tokenize_texts,
    tokenizer_options,
)
from .unpadded import PackedBatch, UnpaddedEncoder, Unsupported, agreement_tolerance

# The batch planner's fixed cost of a forward pass (in tokens) when it cannot be measured at load.
DEFAULT_GROUP_OVERHEAD_TOKENS = 96
CALIBRATION_PASS_SECONDS = 0.25


def _scatter(batch: dict[str, Array], rows: list[int], part: dict[str, Array], total: int) -> None:
    """Write one forward pass's outputs into the batch's arrays at the rows of its texts."""
    for name, values in part.items():
        if name not in batch:
            batch[name] = np.empty((total, *values.shape[1:]), dtype=values.dtype)
        batch[name][rows] = values


class EncoderRole:
    """Tokenizer, forward passes and post-processing in one model. A batch of requests is handled as one:
    one tokenizer call, forward passes planned by length, outputs reduced on the device (pooling, mask
    positions) so that only what the client gets is copied back, written into one array per output for
    the whole batch; each request's response is its rows of those arrays."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = settings.device
        self.model = load_model(settings)
        # Text pairs and cross-encoder scores (ranking.py, copied beside this file for these tasks only).
        self.pairs: Any = None
        if settings.task in ("text-classification", "text-ranking"):
            self.pairs = importlib.import_module(".ranking", __package__)
        self.input_names = [
            name
            for name in settings.tokenizer.model_input_names
            if name in ("input_ids", "attention_mask", "token_type_ids")
        ]
        self.outputs = TaskOutputs(settings)
        self.profile = StageProfile("encoder", ("decode", "tokenize", "forward", "outputs", "respond"))
        # On a CPU each pass's thread count is chosen from measured passes (helpers.ThreadTuner).
        self.threads = ThreadTuner(settings.cpu_threads) if self.device.type == "cpu" else None
        settings.log_accuracy()
        # A batch runs as one pass over its real tokens where the model's layout allows (unpadded.py);
        # otherwise as padded passes of similar lengths, planned from the measured cost of a pass.
        self.group_overhead: int | None = None
        self._last_tokens = 0  # the last batch's token count, for the profile line
        self.unpadded, self.padded_reason = self._attach_unpadded()
        if self.unpadded is not None:
            settings.log_info(f"each batch runs as one forward pass over its real tokens on {self.device}")
        else:
            self.group_overhead = self._calibrate_group_overhead()
            settings.log_info(
                f"padded forward passes ({self.padded_reason}); one pass costs as much as "
                f"{self.group_overhead} tokens on {self.device}; batches are split by length accordingly"
            )

    def execute(self, requests: list[Any]) -> list[Any]:
        started = time.perf_counter()
        self.profile.started(started)
        batch = self.decode(requests)
        self.profile.add("decode", time.perf_counter() - started)
        if not batch.texts:
            return batch.responses
        try:
            outputs, failures = self.encode(batch.texts, batch.pairs)
        except Exception as exc:  # one bad batch must not take the server down
            batch.fail_unanswered(f"inference failed: {exc}")
            return batch.responses
        responding = time.perf_counter()
        responses = self.respond(batch, outputs, failures)
        finished = time.perf_counter()
        self.profile.add("respond", finished - responding)
        line = self.profile.finished(finished, len(batch.texts), self._last_tokens)
        if line is not None:
            if self.threads is not None:
                line += f"; threads by width group: {self.threads.choices()}"
            self.settings.log_info(line)
        return responses

    def decode(self, requests: list[Any]) -> DecodedRequests:
        """The batch's texts (a request with a bad input already answered with its error)."""
        return DecodedRequests(requests, self.pairs, self.settings.task)

    def respond(
        self, batch: DecodedRequests, outputs: dict[str, Array], failures: dict[int, str]
    ) -> list[Any]:
        """Each request's response: its rows of the batch's outputs, or the first of its texts' errors.
        `decode` and `respond` touch Triton's objects, `encode` only arrays: the shared host runs
        `encode` on a worker thread and the other two on the stub's own."""
        for index, first, count in batch.owners:
            bad = [failures[p] for p in range(first, first + count) if p in failures]
            batch.responses[index] = error_response(bad[0]) if bad else response(outputs, first, count)
        return batch.responses

    def encode(
        self, texts: list[str], pairs: list[str | None] | None = None
    ) -> tuple[dict[str, Array], dict[int, str]]:
        """The batch's output arrays (row = text) and the texts refused, with the reason; `pairs` holds
        each text's other text (None where it has none) for the tasks that take pairs."""
        import torch

        began = time.perf_counter()
        encoded = self.tokenize(texts, pairs)
        ids: list[list[int]] = encoded["input_ids"]
        self._last_tokens = sum(len(seq) for seq in ids)
        tokenized = time.perf_counter()
        failures: dict[int, str] = {}
        if self.settings.task == "fill-mask":
            tokenizer = self.settings.tokenizer
            for position, seq in enumerate(ids):
                if tokenizer.mask_token_id not in seq:
                    failures[position] = (
                        f"input TEXT must contain the mask token {tokenizer.mask_token} within its "
                        f"first {self.settings.max_length} tokens"
                    )
        runnable = [position for position in range(len(texts)) if position not in failures]
        if not runnable:
            groups: list[list[int]] = []
        elif self.unpadded is not None or self.group_overhead is None:  # one pass over its real tokens
            groups = [runnable]
        else:
            lengths = [len(ids[i]) for i in runnable]
            planned = plan_length_groups(lengths, self.group_overhead, self.settings.max_batch)
            groups = [[runnable[i] for i in group] for group in planned]
        with torch.inference_mode():
            passes = self.forward_groups(groups, encoded)
        forwarded = time.perf_counter()
        batch: dict[str, Array] = {}
        for members, host in passes:
            _scatter(batch, members, self.host_outputs(members, host, encoded, texts), len(texts))
        self.profile.add("tokenize", tokenized - began)
        self.profile.add("forward", forwarded - tokenized)
        self.profile.add("outputs", time.perf_counter() - forwarded)
        return batch, failures

    def tokenize(self, texts: list[str], pairs: list[str | None] | None = None) -> Any:
        s = self.settings
        offsets = s.task == "token-classification"
        if pairs is not None and any(pair is not None for pair in pairs):
            options = tokenizer_options(s.tokenizer, s.max_length, offsets)
            return self.pairs.tokenize_pairs(s.tokenizer, s.task, texts, pairs, **options)
        return tokenize_texts(s.tokenizer, texts, s.max_length, offsets)

    def forward_groups(
        self, groups: list[list[int]], encoded: Any
    ) -> list[tuple[list[int], dict[str, Array]]]:
        """Run every pass, then bring their reduced outputs to the host. On CUDA the passes are queued
        back to back (pinned inputs, non-blocking copies both ways) and the host waits once."""
        pending = []
        for members in groups:
            if self.unpadded is not None:
                pending.append((members, self._unpadded_pass(self.unpadded, members, encoded)))
                continue
            input_ids = pad_batch([encoded["input_ids"][i] for i in members], self.settings.pad_id)
            lengths = np.array([len(encoded["input_ids"][i]) for i in members])
            attention = (np.arange(input_ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
            types = None
            if "token_type_ids" in encoded:
                types = pad_batch([encoded["token_type_ids"][i] for i in members], 0)
            pending.append((members, self._reduced_pass(input_ids, attention, types)))
        cuda = self.device.type == "cuda"
        copies = [
            (members, {k: v.to("cpu", non_blocking=cuda) for k, v in out.items()}) for members, out in pending
        ]
        self._synchronize()
        return [(members, {k: v.numpy() for k, v in out.items()}) for members, out in copies]

    def _reduced_pass(self, input_ids: Array, attention: Array, types: Array | None) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            return self._reduce_on_device(self._forward(input_ids, attention, types), attention, input_ids)

        if self.threads is None:
            return run()
        return self.threads.run(int(input_ids.size), run)

    def _unpadded_pass(self, unpadded: UnpaddedEncoder, members: list[int], encoded: Any) -> dict[str, Any]:
        types = encoded.get("token_type_ids") if "token_type_ids" in self.input_names else None
        batch = PackedBatch(
            [encoded["input_ids"][i] for i in members], [types[i] for i in members] if types else None
        )

        def run() -> dict[str, Any]:
            return unpadded.run(batch, self._to_device, self._pool)  # type: ignore[no-any-return]

        if self.threads is None:
            return run()
        return self.threads.run(batch.tokens, run)

    def _pool(self, hidden: Any, mask: Any) -> Any:
        return pool_hidden_states(hidden, mask, self.settings.pooling, self.settings.normalize)

    def _attach_unpadded(self) -> tuple[UnpaddedEncoder | None, str]:
        """The unpadded forward if this model's layout allows it and it agrees with the model's own padded
        forward on texts of several lengths; else None and why."""
        s = self.settings
        try:
            unpadded = UnpaddedEncoder(self.model, s.task, s.tokenizer.mask_token_id)
        except Unsupported as exc:
            return None, f"no unpadded forward for {exc}"
        except AttributeError as exc:  # a transformers whose modules are laid out otherwise
            return None, f"no unpadded forward: the model's modules are not laid out as expected ({exc})"
        try:
            difference = self._unpadded_difference(unpadded)
        except Exception as exc:  # any failure of the unpadded path leaves the padded one serving
            return None, f"the unpadded forward failed on this model ({type(exc).__name__}: {exc})"
        quantized = s.params.get("quantization", "none") != "none"
        tolerance = agreement_tolerance(s.params.get("dtype", "float32"), quantized)
        if difference > tolerance:
            return None, (
                f"the unpadded forward differs from the model's own by {difference:.3g} of the outputs' "
                f"scale (at most {tolerance:g} allowed)"
            )
        return unpadded, ""

    def _unpadded_difference(self, unpadded: UnpaddedEncoder) -> float:
        """The largest difference between the unpadded and the padded forward's reduced outputs on texts of
        several lengths, relative to the outputs' scale."""
        import torch

        s = self.settings
        seq = self._filler_tokens()
        if s.task == "fill-mask":
            seq = [*seq[:1], int(s.tokenizer.mask_token_id), *seq[2:]]
        lengths = sorted({min(n, s.max_length, len(seq)) for n in (3, 9, 24, 64)})
        texts = [seq[:n] for n in lengths]
        typed = "token_type_ids" in self.input_names
        encoded: dict[str, list[list[int]]] = {"input_ids": texts}
        if typed:
            encoded["token_type_ids"] = [[0] * n for n in lengths]
        input_ids = pad_batch(texts, s.pad_id)
        attention = (np.arange(input_ids.shape[1])[None, :] < np.array(lengths)[:, None]).astype(np.int64)
        with torch.inference_mode():
            ours = self._unpadded_pass(unpadded, list(range(len(texts))), encoded)
            theirs = self._reduced_pass(input_ids, attention, np.zeros_like(input_ids) if typed else None)
        worst = 0.0
        for name, reference in theirs.items():
            got, want = ours[name].float().cpu(), reference.float().cpu()
            if got.shape != want.shape:
                return math.inf
            if s.task == "token-classification":  # only real tokens' rows are compared
                real = torch.from_numpy(attention.astype(bool))
                got, want = got[real], want[real]
            scale = max(1.0, float(want.abs().max()))
            worst = max(worst, float((got - want).abs().max()) / scale)
        return worst

    def _filler_tokens(self) -> list[int]:
        """Token ids of a repeated English filler, up to the model's max length (load-time passes)."""
        s = self.settings
        filler = s.tokenizer(
            "calibration text for the batch planner " * 64,
            add_special_tokens=False,
            truncation=True,
            max_length=s.max_length,
        )
        return [int(t) for t in filler["input_ids"]] or [s.pad_id]

    def _reduce_on_device(self, output: Any, attention: Array, input_ids: Array) -> dict[str, Any]:
        """What the host needs from one pass's output, computed where the model ran."""
        import torch

        task = self.settings.task
        if task == "feature-extraction":
            mask = torch.from_numpy(attention)
            pooled = pool_hidden_states(
                output.last_hidden_state, mask, self.settings.pooling, self.settings.normalize
            )
            return {"pooled": pooled}
        if task == "fill-mask":  # only the first mask position of each text leaves the device
            logits = output.logits
            positions = torch.from_numpy((input_ids == self.settings.tokenizer.mask_token_id).argmax(axis=1))
            rows = torch.arange(input_ids.shape[0], device=logits.device)
            return {"mask_logits": logits[rows, positions.to(logits.device)].float()}
        return {"logits": output.logits.float()}

    def host_outputs(
        self, members: list[int], host: dict[str, Array], encoded: Any, texts: list[str]
    ) -> dict[str, Array]:
        task = self.settings.task
        if task == "feature-extraction":
            return self.outputs.embeddings(host["pooled"])
        if task == "fill-mask":
            return self.outputs.fill_mask(host["mask_logits"])
        if task == "text-classification":
            return self.outputs.classification(host["logits"])
        if task == "text-ranking":
            return self.outputs.ranking(
                self.pairs.relevance_scores(host["logits"], self.settings.ranking_activation)
            )
        return self.outputs.entities(
            host["logits"],
            [encoded["offset_mapping"][i] for i in members],
            [encoded["special_tokens_mask"][i] for i in members],
            [texts[i] for i in members],
        )

    def _forward(self, input_ids: Array, attention: Array, token_types: Array | None) -> Any:
        """One padded forward pass, queued: on CUDA nothing waits for the device here."""
        arrays = {"input_ids": input_ids, "attention_mask": attention}
        if "token_type_ids" in self.input_names:
            arrays["token_type_ids"] = token_types if token_types is not None else np.zeros_like(input_ids)
        return self.model(**{name: self._to_device(array) for name, array in arrays.items()})

    def _to_device(self, array: Array) -> Any:
        import torch

        tensor = torch.from_numpy(array)
        if self.device.type != "cuda":
            return tensor
        # From page-locked memory the copy is a plain DMA that does not block the host; torch's caching
        # host allocator reuses the buffer once the copy has finished.
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _synchronize(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _calibrate_group_overhead(self) -> int:
        """Time forward passes from one short text up to a full batch on this instance's device and fit
        the fixed cost of a pass (see `fit_pass_overhead`).

        The shapes span the passes the planner chooses between: small passes are inefficient on a CPU
        in ways a fit over small shapes alone underrates. Each shape runs three times and its fastest run
        counts, so a momentarily busy machine skews the fit less; shapes stop growing once a pass takes
        longer than CALIBRATION_PASS_SECONDS, which bounds the time a large model spends on this at load.
        """
        import torch

        s = self.settings
        ceiling = s.max_batch * s.max_length
        token_ids = self._filler_tokens()
        short, long = min(16, s.max_length), min(64, s.max_length)
        rows = sorted({min(count, s.max_batch) for count in (1, 4, 16, s.max_batch)})
        shapes = [(1, short)] + [(count, long) for count in rows]
        samples: list[tuple[int, float]] = []
        with torch.inference_mode():
            for batch, length in shapes:
                ids = np.array([(token_ids * length)[:length]] * batch, dtype=np.int64)
                best = math.inf
                for _ in range(3):
                    started = time.perf_counter()
                    self._forward(ids, np.ones_like(ids), None)
                    self._synchronize()
                    best = min(best, time.perf_counter() - started)
                samples.append((batch * length, best))
                if best > CALIBRATION_PASS_SECONDS and len(samples) >= 2:
                    break
        return fit_pass_overhead(samples, ceiling)

    def finalize(self) -> None:
        self.model = None
