"""The limit: the raw model in this process (tokenizer + forward pass + the same post-processing), no
server, no client, at each batch size, with plain padding and with batches of similar lengths."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.common.checkpoints import BenchModel


class RawModel:
    """Tokenizer and model loaded the way the served runtimes load them, for in-process batches."""

    def __init__(
        self,
        model: BenchModel,
        device: str,
        dtype: str,
        int8_keep_float: Sequence[str] | None = None,
        int8_smoothing: dict[str, Any] | None = None,
    ) -> None:
        """`int8_keep_float` (a list, maybe empty): quantise like the runtime does, these layers kept and
        those in `int8_smoothing` smoothed (the repository's scales)."""
        import torch
        import transformers

        self.bench_model = model
        self.device = torch.device(device)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(model.path))
        auto_class = (
            transformers.AutoModel
            if model.task == "feature-extraction"
            else transformers.AutoModelForSequenceClassification
        )
        self.model: Any = auto_class.from_pretrained(str(model.path), dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        if int8_keep_float is not None:
            from model_repo.runtime.model import quantize_int8

            self.model = quantize_int8(self.model, list(int8_keep_float), int8_smoothing)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.bench_model.max_length)
        return [len(ids) for ids in encoded["input_ids"]]

    def run_batch(self, texts: Sequence[str]) -> tuple[int, int]:
        """One batch end to end, results back on the host; returns (real tokens, padded tokens)."""
        _, real, padded = self.outputs(texts)
        return real, padded

    def outputs(self, texts: Sequence[str]) -> tuple[Any, int, int]:
        """One batch's results (embeddings or class probabilities), real tokens, padded tokens."""
        import torch

        encoded = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.bench_model.max_length,
            return_tensors="pt",
        )
        inputs = {name: tensor.to(self.device) for name, tensor in encoded.items()}
        with torch.inference_mode():
            output = self.model(**inputs)
            if self.bench_model.task == "feature-extraction":
                mask = inputs["attention_mask"].unsqueeze(-1).to(output.last_hidden_state.dtype)
                pooled = (output.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                result = torch.nn.functional.normalize(pooled.float(), dim=-1)
            else:
                result = torch.softmax(output.logits.float(), dim=-1)
            values = result.cpu().numpy()
        attention = encoded["attention_mask"]
        return values, int(attention.sum()), int(attention.numel())


@dataclass(frozen=True)
class RawPoint:
    batch_size: int
    grouped: bool
    throughput: float  # texts per second
    padding_efficiency: float  # real tokens / computed tokens
    foreign_share: float | None = None  # CPU share other processes used meanwhile

    def summary(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "grouped": self.grouped,
            "throughput_tps": round(self.throughput, 2),
            "padding_efficiency": round(self.padding_efficiency, 3),
            "foreign_cpu_share": self.foreign_share,
        }


def batches(texts: Sequence[str], lengths: Sequence[int], batch_size: int, grouped: bool) -> list[list[str]]:
    """Consecutive batches in workload order, or (grouped) of texts sorted by token length."""
    order = (
        sorted(range(len(texts)), key=lambda index: lengths[index]) if grouped else list(range(len(texts)))
    )
    return [
        [texts[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)
    ]


def measure(
    raw: RawModel, texts: Sequence[str], batch_size: int, grouped: bool, min_seconds: float
) -> RawPoint:
    """Run the whole text set in batches, repeated until `min_seconds` have passed; texts per second."""
    lengths = raw.token_lengths(texts)
    plan = batches(texts, lengths, batch_size, grouped)
    # One untimed pass: the first batch of each new shape pays one-off costs (allocator growth, kernel
    # selection; about 50 ms per new sequence length on an H100), which a long-running server has paid.
    for batch in plan:
        raw.run_batch(batch)
    done = real = padded = 0
    started = time.perf_counter()
    while True:
        for batch in plan:
            batch_real, batch_padded = raw.run_batch(batch)
            real += batch_real
            padded += batch_padded
            done += len(batch)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return RawPoint(batch_size, grouped, done / elapsed, real / padded if padded else 0.0)


def sweep(
    raw: RawModel,
    texts: Sequence[str],
    batch_sizes: Sequence[int],
    min_seconds: float,
    guard: Callable[[Callable[[], RawPoint], str], RawPoint] = lambda measure_point, _what: measure_point(),
    passes: int = 1,
) -> list[RawPoint]:
    """Every batch size, plain and grouped; `guard` runs each measurement (e.g. repeating disturbed ones).

    With several `passes` (every other one in reverse order) each point keeps its best pass: a limit is
    what the model can do, and a slow spell of the machine during one pass should not lower it.
    """
    plan = [
        (size, grouped)
        for grouped in (False, True)
        for size in batch_sizes
        if not (size == 1 and grouped)  # a batch of one has no padding to save
    ]
    kept: dict[tuple[int, bool], RawPoint] = {}
    for index in range(max(1, passes)):
        for size, grouped in plan if index % 2 == 0 else reversed(plan):
            what = f"raw {'grouped' if grouped else 'plain'} batch {size}"
            point = guard(functools.partial(measure, raw, texts, size, grouped, min_seconds), what)
            previous = kept.get((size, grouped))
            if previous is None or point.throughput > previous.throughput:
                kept[(size, grouped)] = point
    return [kept[key] for key in plan]


def best(points: Sequence[RawPoint], grouped: bool) -> RawPoint:
    candidates = [p for p in points if p.grouped == grouped or (grouped and p.batch_size == 1)]
    return max(candidates, key=lambda point: point.throughput)


def agreement(reference: RawModel, candidate: RawModel, texts: Sequence[str]) -> dict[str, float]:
    """How close the candidate's answers are to the reference's on the workload (length-sorted batches
    of 32, as served): cosine of embeddings, or label agreement and probability difference."""
    import numpy as np

    lengths = reference.token_lengths(texts)
    ours, theirs = [], []
    for batch in batches(texts, lengths, 32, grouped=True):
        ours.append(reference.outputs(batch)[0])
        theirs.append(candidate.outputs(batch)[0])
    a, b = np.concatenate(ours).astype(np.float64), np.concatenate(theirs).astype(np.float64)
    if reference.bench_model.task == "feature-extraction":
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        return {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min())}
    return {
        "label_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "max_probability_difference": float(np.abs(a - b).max()),
    }
