"""The `tokenizer` role of the Python-backend runtime: the `onnx` format's first step, in front of the
ONNX model."""

from __future__ import annotations

from typing import Any

import numpy as np

from .helpers import Array, pad_batch
from .serving import DecodedRequests, Settings, response, tokenize_texts

# Sequence lengths in the ONNX path are rounded up to this so that consecutive tokenizer batches
# produce few distinct shapes, which Triton's dynamic batcher in front of the ONNX model can merge.
ONNX_LENGTH_QUANTUM = 16


class OnnxTokenizerRole:
    """The ONNX format's first step: texts to padded token tensors (lengths rounded up to a quantum so
    that the dynamic batcher in front of the ONNX model can merge consecutive batches)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.declared = [output["name"] for output in settings.model_config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        batch = DecodedRequests(requests)
        if batch.texts:
            try:
                produced = self.tokenize(batch.texts)
                outputs = {name: produced[name] for name in self.declared}
                for index, first, count in batch.owners:
                    batch.responses[index] = response(outputs, first, count)
            except Exception as exc:  # one bad batch must not take the server down
                batch.fail_unanswered(f"inference failed: {exc}")
        return batch.responses

    def tokenize(self, texts: list[str]) -> dict[str, Array]:
        s = self.settings
        encoded = tokenize_texts(s.tokenizer, texts, s.max_length, offsets=True)
        ids: list[list[int]] = encoded["input_ids"]
        longest = max(len(seq) for seq in ids)
        width = max(longest, min(-(-longest // ONNX_LENGTH_QUANTUM) * ONNX_LENGTH_QUANTUM, s.max_length))
        input_ids = pad_batch(ids, s.pad_id, width)
        attention = np.zeros_like(input_ids)
        offsets = np.zeros((len(ids), width, 2), dtype=np.int64)
        special = np.ones_like(input_ids)
        for row, seq in enumerate(ids):
            attention[row, : len(seq)] = 1
            offsets[row, : len(seq)] = encoded["offset_mapping"][row]
            special[row, : len(seq)] = encoded["special_tokens_mask"][row]
        produced = {"input_ids": input_ids, "attention_mask": attention, "OFFSETS": offsets}
        produced["SPECIAL_TOKENS_MASK"] = special
        if "token_type_ids" in encoded:
            produced["token_type_ids"] = pad_batch(encoded["token_type_ids"], 0, width)
        return produced

    def finalize(self) -> None:
        pass
