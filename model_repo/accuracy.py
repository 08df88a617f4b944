"""The accuracy gate: the original (float32) model against the optimised one on calibration texts.

Both models see the same batches, and their outputs go through the runtime's own post-processing
(`runtime/model.py`), so the figures describe what a client would get. Each task has one gated metric
(the floor applies to it) and further figures reported beside it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_repo.errors import BuildError
from model_repo.options import Task
from model_repo.runtime.model import (
    classification_outputs,
    pool_embeddings,
    softmax,
    token_entities,
)

ACCURACY_FILE = "accuracy.json"
# The gated metric per task and its default floor: what a user who swaps float32 for a cheaper model
# would check first. Agreement floors allow one miss in fifty; embeddings must stay near-identical.
GATED_METRIC: dict[Task, tuple[str, float]] = {
    Task.TEXT_CLASSIFICATION: ("label_agreement", 0.98),
    Task.TOKEN_CLASSIFICATION: ("entity_agreement", 0.98),
    Task.FEATURE_EXTRACTION: ("cosine_mean", 0.99),
    Task.FILL_MASK: ("top1_agreement", 0.98),
    Task.TEXT_GENERATION: ("greedy_token_agreement", 0.98),
}
MAX_CALIBRATION_TEXTS = 2000
BATCH = 16
GENERATION_TOKENS = 16

# Varied English: lengths from a few words to long sentences, questions, names, places, organisations
# and numbers (so token classifiers find entities), everyday and technical registers. One text per line,
# read like a user's --calibration-file.
BUILT_IN_CALIBRATION_FILE = Path(__file__).with_name("calibration_texts.txt")


@dataclass(frozen=True)
class AccuracyReport:
    task: Task
    optimisation: dict[str, Any]
    calibration: str
    texts: int
    metrics: dict[str, float]
    metric: str
    floor: float

    @property
    def value(self) -> float:
        return self.metrics[self.metric]

    @property
    def passed(self) -> bool:
        return self.value >= self.floor

    def as_json(self) -> dict[str, Any]:
        return {
            "reference": "float32",
            "optimisation": self.optimisation,
            "task": self.task.value,
            "calibration": self.calibration,
            "texts": self.texts,
            "metrics": {name: round(value, 6) for name, value in self.metrics.items()},
            "gate": {
                "metric": self.metric,
                "value": round(self.value, 6),
                "floor": self.floor,
                "passed": self.passed,
            },
        }

    def summary(self) -> str:
        figures = ", ".join(f"{name} {value:.4f}" for name, value in self.metrics.items())
        verdict = ">=" if self.passed else "<"
        return (
            f"accuracy of {describe(self.optimisation)} vs float32 on {self.texts} {self.calibration} texts: "
            f"{figures} ({self.metric} {self.value:.4f} {verdict} floor {self.floor})"
        )


def describe(optimisation: dict[str, Any]) -> str:
    if optimisation.get("quantization", "none") != "none":
        return f"{optimisation['quantization']} ({optimisation.get('scheme', '')})".replace(" ()", "")
    return str(optimisation.get("dtype", "float32"))


def _shown(value: float, floor: float) -> str:
    """Four decimals, or every digit where four would round up to the floor it misses."""
    text = f"{value:.4f}"
    return text if float(text) < floor else repr(value)


def default_floor(task: Task) -> float:
    return GATED_METRIC[task][1]


def _read_calibration_file(path: Path) -> tuple[list[str], bytes]:
    """The texts of a file of one text per line (blank lines skipped), and the file's bytes."""
    try:
        raw = path.read_bytes()
        lines = raw.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"cannot read the calibration file {path}: {exc}") from exc
    return [line.strip() for line in lines if line.strip()], raw


CALIBRATION_TEXTS: tuple[str, ...] = tuple(_read_calibration_file(BUILT_IN_CALIBRATION_FILE)[0])


def calibration_texts(path: Path | None) -> tuple[list[str], str, str | None]:
    """(texts, label, content sha256) from a file of one text per line, or the built-in set."""
    if path is None:
        return list(CALIBRATION_TEXTS), "built-in", None
    texts, raw = _read_calibration_file(path)
    if not texts:
        raise BuildError(f"the calibration file {path} holds no text (one text per line)")
    if len(texts) > MAX_CALIBRATION_TEXTS:
        raise BuildError(
            f"the calibration file {path} holds {len(texts)} texts; at most {MAX_CALIBRATION_TEXTS} are used "
            "for the accuracy gate, trim it"
        )
    return texts, "user-supplied", hashlib.sha256(raw).hexdigest()


def masked_texts(texts: Sequence[str], mask_token: str) -> list[str]:
    """Each text with its middle word replaced by the mask token (fill-mask calibration)."""
    result = []
    for text in texts:
        words = text.split()
        words[len(words) // 2] = mask_token
        result.append(" ".join(words))
    return result


# A forward function takes int64 input_ids, attention_mask and token_type_ids (or None) and returns the
# model's logits or last hidden state as float32.
Forward = Callable[[Any, Any, Any], Any]


def torch_forward(model: Any, output_name: str, input_names: Sequence[str]) -> Forward:
    import torch

    def forward(input_ids: Any, attention: Any, types: Any) -> Any:
        inputs = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention)}
        if "token_type_ids" in input_names:
            inputs["token_type_ids"] = torch.from_numpy(
                types if types is not None else np.zeros_like(input_ids)
            )
        with torch.inference_mode():
            return getattr(model(**inputs), output_name).float().numpy()

    return forward


def onnx_forward(path: Path, output_name: str, input_names: Sequence[str]) -> Forward:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def forward(input_ids: Any, attention: Any, types: Any) -> Any:
        feed = {"input_ids": input_ids, "attention_mask": attention}
        if "token_type_ids" in input_names:
            feed["token_type_ids"] = types if types is not None else np.zeros_like(input_ids)
        (values,) = session.run([output_name], feed)
        return np.asarray(values, dtype=np.float32)

    return forward


def _encoder_outputs(
    forward: Forward, tokenizer: Any, texts: Sequence[str], max_length: int, offsets: bool
) -> list[tuple[Any, Any, Any]]:
    """(output, attention mask, encoding) per batch of BATCH texts."""
    batches = []
    for start in range(0, len(texts), BATCH):
        chunk = list(texts[start : start + BATCH])
        encoded = tokenizer(
            chunk,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
            return_offsets_mapping=offsets,
            return_special_tokens_mask=offsets,
        )
        ids = encoded["input_ids"].astype(np.int64)
        attention = encoded["attention_mask"].astype(np.int64)
        types = encoded["token_type_ids"].astype(np.int64) if "token_type_ids" in encoded else None
        batches.append((forward(ids, attention, types), attention, encoded))
    return batches


def encoder_metrics(
    task: Task,
    reference: Forward,
    candidate: Forward,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    runtime: dict[str, str],
    labels: Sequence[str],
) -> dict[str, float]:
    """The task's metrics for an encoder: `runtime` holds the runtime parameters (pooling, normalize)."""
    if task is Task.FILL_MASK:
        texts = masked_texts(texts, tokenizer.mask_token)
    offsets = task is Task.TOKEN_CLASSIFICATION
    ours = _encoder_outputs(reference, tokenizer, texts, max_length, offsets)
    theirs = _encoder_outputs(candidate, tokenizer, texts, max_length, offsets)
    if task is Task.TEXT_CLASSIFICATION:
        multi = runtime.get("problem_type") == "multi_label_classification"
        agree: list[bool] = []
        diffs: list[float] = []
        for (a, _, _), (b, _, _) in zip(ours, theirs, strict=True):
            _, _, scores_a = classification_outputs(a, list(labels), multi)
            _, _, scores_b = classification_outputs(b, list(labels), multi)
            agree.extend(scores_a.argmax(-1) == scores_b.argmax(-1))
            diffs.append(float(np.abs(scores_a - scores_b).max()))
        return {"label_agreement": float(np.mean(agree)), "max_probability_difference": max(diffs)}
    if task is Task.FEATURE_EXTRACTION:
        pooling, normalize = runtime.get("pooling", "cls"), runtime.get("normalize") == "true"
        cosines: list[float] = []
        for (a, mask, _), (b, _, _) in zip(ours, theirs, strict=True):
            pa = pool_embeddings(a, mask, pooling, normalize).astype(np.float64)
            pb = pool_embeddings(b, mask, pooling, normalize).astype(np.float64)
            norms = np.linalg.norm(pa, axis=1) * np.linalg.norm(pb, axis=1)
            # Rounding must not lift a cosine above 1, where it would pass any floor.
            cosines.extend(np.minimum((pa * pb).sum(axis=1) / np.clip(norms, 1e-12, None), 1.0))
        return {"cosine_mean": float(np.mean(cosines)), "cosine_min": float(np.min(cosines))}
    if task is Task.TOKEN_CLASSIFICATION:
        same_entities: set[tuple[Any, ...]] = set()
        all_entities: set[tuple[Any, ...]] = set()
        token_agree: list[bool] = []
        index = 0
        for (a, mask, encoded), (b, _, _) in zip(ours, theirs, strict=True):
            for row in range(a.shape[0]):
                count = int(mask[row].sum())
                spans = encoded["offset_mapping"][row][:count].tolist()
                special = encoded["special_tokens_mask"][row][:count].tolist()
                found = []
                for values in (a, b):
                    entities = token_entities(values[row], spans, special, texts[index], list(labels))
                    found.append({(index, e["entity_group"], e["start"], e["end"]) for e in entities})
                same_entities |= found[0] & found[1]
                all_entities |= found[0] | found[1]
                real = [i for i in range(count) if not special[i]]
                token_agree.extend(a[row][real].argmax(-1) == b[row][real].argmax(-1))
                index += 1
        agreement = len(same_entities) / len(all_entities) if all_entities else 1.0
        return {"entity_agreement": agreement, "token_label_agreement": float(np.mean(token_agree))}
    # fill-mask: the best filler at the (first) mask position
    agree = []
    overlap: list[float] = []
    for (a, _, encoded), (b, _, _) in zip(ours, theirs, strict=True):
        hits = encoded["input_ids"] == tokenizer.mask_token_id
        positions = hits.argmax(axis=1)
        rows = np.arange(a.shape[0])
        pa, pb = softmax(a[rows, positions]), softmax(b[rows, positions])
        agree.extend(pa.argmax(-1) == pb.argmax(-1))
        top_a, top_b = np.argsort(-pa, axis=-1)[:, :5], np.argsort(-pb, axis=-1)[:, :5]
        overlap.extend(len(set(x) & set(y)) / 5 for x, y in zip(top_a.tolist(), top_b.tolist(), strict=True))
    return {"top1_agreement": float(np.mean(agree)), "top5_overlap": float(np.mean(overlap))}


def greedy_generate(
    model: Any, input_ids: Any, new_tokens: int, pad_token_id: int, exact: bool = False, **controls: Any
) -> Any:
    """transformers' `generate`, greedy, for unpadded `input_ids` ([batch, length] torch tensor): the prompt
    and up to `new_tokens` more tokens (with `exact`, that many: the end-of-sequence token does not stop
    it; `controls`: more of `generate`'s arguments). The reference the accuracy gate and the runtime's tests
    compare against."""
    import torch

    at_least = {"min_new_tokens": new_tokens} if exact else {}
    return model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad_token_id,
        **at_least,
        **controls,
    )


def generation_metrics(
    reference: Any, candidate: Any, tokenizer: Any, texts: Sequence[str]
) -> dict[str, float]:
    """Greedy token agreement, teacher-forced: the reference model continues each prompt greedily, and
    the share of positions where the candidate's next-token choice on that same text matches counts."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    agree: list[bool] = []
    with torch.inference_mode():
        for text in texts:
            prompt = tokenizer(text, return_tensors="pt")["input_ids"][:, :32]
            sequence = greedy_generate(reference, prompt, GENERATION_TOKENS, pad)
            start = prompt.shape[1] - 1
            picks = []
            for model in (reference, candidate):
                logits = model(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits
                picks.append(logits[0, start:-1].float().argmax(-1))
            agree.extend((picks[0] == picks[1]).tolist())
    return {"greedy_token_agreement": float(np.mean(agree))}


def gate(
    task: Task,
    metrics: dict[str, float],
    optimisation: dict[str, Any],
    calibration: str,
    texts: int,
    floor: float | None,
) -> AccuracyReport:
    """The report; raises BuildError naming the metric, its value and the floor when below it."""
    metric, default = GATED_METRIC[task]
    report = AccuracyReport(
        task, optimisation, calibration, texts, metrics, metric, default if floor is None else floor
    )
    if not report.passed:
        raise BuildError(
            f"accuracy gate failed: {metric} {_shown(report.value, report.floor)} is below the floor "
            f"{report.floor} "
            f"({describe(optimisation)} vs float32 on {texts} {calibration} calibration texts; all figures: "
            f"{json.dumps(report.as_json()['metrics'])}). Lower the floor (spec.triton.accuracyFloor, "
            "--accuracy-floor) only if this loss is acceptable, or serve without this optimisation"
        )
    return report
