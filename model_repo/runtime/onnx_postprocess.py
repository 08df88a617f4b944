"""The `postprocess` role of the Python-backend runtime: the `onnx` format's last step, behind the ONNX
model."""

from __future__ import annotations

from typing import Any

import numpy as np

from .helpers import pool_embeddings
from .serving import RequestError, Settings, TaskOutputs, decode_texts, error_response, input_array, response


class OnnxPostprocessRole:
    """The ONNX format's last step: the ONNX model's outputs (one ensemble request = one tokenizer batch)
    to the task's outputs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.outputs = TaskOutputs(settings)
        settings.log_accuracy()

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._postprocess(request) for request in requests]

    def _postprocess(self, request: Any) -> Any:
        s = self.settings

        try:
            attention = input_array(request, "attention_mask")
            values = input_array(request, s.params["onnx_output"])
            if s.task == "text-classification":
                outputs = self.outputs.classification(values)
            elif s.task == "feature-extraction":
                outputs = self.outputs.embeddings(pool_embeddings(values, attention, s.pooling, s.normalize))
            elif s.task == "token-classification":
                counts = attention.sum(axis=1).astype(int).tolist()
                offsets = input_array(request, "OFFSETS")
                special = input_array(request, "SPECIAL_TOKENS_MASK")
                outputs = self.outputs.entities(
                    values,
                    [[tuple(pair) for pair in offsets[row][:n].tolist()] for row, n in enumerate(counts)],
                    [special[row][:n].tolist() for row, n in enumerate(counts)],
                    decode_texts(request, "TEXT"),
                )
            else:
                mask_hits = input_array(request, "input_ids") == s.tokenizer.mask_token_id
                if not mask_hits.any(axis=1).all():
                    raise RequestError(
                        f"input TEXT must contain the mask token {s.tokenizer.mask_token} within its "
                        f"first {s.max_length} tokens"
                    )
                outputs = self.outputs.fill_mask(values[np.arange(values.shape[0]), mask_hits.argmax(axis=1)])
            return response(outputs, 0, attention.shape[0])
        except RequestError as exc:
            return error_response(str(exc))

    def finalize(self) -> None:
        pass
