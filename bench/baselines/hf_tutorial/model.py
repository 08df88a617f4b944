"""Baseline (a): the per-request Python-backend model of Triton's Hugging Face tutorial.

Follows tutorials/Quick_Deploy/HuggingFaceTransformers/text_classification/base_text_classification_model.py:
a `transformers.pipeline` built in `initialize`, and `execute` calling it once per request, one prompt
at a time, with no batching. Kept faithful on purpose; the differences are:
- the checkpoint comes from a local path (no hub downloads here), and the task, device and dtype are
  config parameters (the tutorial's pipeline picks the device itself and runs float32);
- feature-extraction is handled the way sentence-transformers users do it with a pipeline: token
  states from the pipeline, mean-pooled over the attention mask and L2-normalised;
- the tutorial's two `log_info` calls per request are left out, so logging does not slow the baseline.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import torch
        import transformers

        self.model_config = json.loads(args["model_config"])
        self.model_params = self.model_config.get("parameters", {})
        hf_model = self.model_params["huggingface_model"]["string_value"]
        self.task = self.model_params.get("task", {}).get("string_value", "text-classification")
        device = self.model_params.get("device", {}).get("string_value", "cpu")
        dtype = self.model_params.get("dtype", {}).get("string_value", "float32")
        self.pipeline = transformers.pipeline(
            self.task, model=hf_model, device=device, dtype=getattr(torch, dtype)
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            prompt_tensor = pb_utils.get_input_tensor_by_name(request, "prompt")
            prompt = prompt_tensor.as_numpy()[0].decode("utf-8")
            if self.task == "feature-extraction":
                responses.append(self.embed(prompt))
            else:
                responses.append(self.classify(prompt))
        return responses

    def classify(self, prompt: str) -> Any:
        analysis = self.pipeline(prompt)
        labels = []
        scores = []
        for index in range(0, len(analysis)):
            labels.append(analysis[index]["label"])
            scores.append(analysis[index]["score"])

        out_tensor_0 = pb_utils.Tensor("label", np.array(labels, dtype=np.object_))
        out_tensor_1 = pb_utils.Tensor("score", np.array(scores, dtype=np.float32))
        return pb_utils.InferenceResponse(output_tensors=[out_tensor_0, out_tensor_1])

    def embed(self, prompt: str) -> Any:
        states = self.pipeline(prompt, return_tensors=True)[0].float()  # [tokens, hidden]
        pooled = states.mean(dim=0)
        pooled = pooled / pooled.norm().clamp(min=1e-12)
        embedding = pb_utils.Tensor("embedding", pooled.cpu().numpy().astype(np.float32))
        return pb_utils.InferenceResponse(output_tensors=[embedding])

    def finalize(self) -> None:
        self.pipeline = None
