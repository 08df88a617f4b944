"""Baseline (b) of bench/generation: a per-request text-generation model in the style of Triton's Hugging
Face tutorial (tutorials/Quick_Deploy/HuggingFaceTransformers: a `transformers.pipeline` built in
`initialize`, called once per request in `execute`, no batching, no streaming).

Differences kept small and on purpose: the checkpoint comes from a local path, and `max_new_tokens`
and greedy decoding are config parameters so that every contender generates the same tokens.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import transformers

        params = json.loads(args["model_config"]).get("parameters", {})
        self.max_new_tokens = int(params["max_new_tokens"]["string_value"])
        self.pipeline = transformers.pipeline(
            "text-generation", model=params["huggingface_model"]["string_value"], device="cpu"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            prompt = pb_utils.get_input_tensor_by_name(request, "prompt").as_numpy()[0].decode("utf-8")
            sequences = self.pipeline(
                prompt, max_new_tokens=self.max_new_tokens, do_sample=False, return_full_text=False
            )
            text = sequences[0]["generated_text"]
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("generated_text", np.array([text.encode()], dtype=np.object_))
                    ]
                )
            )
        return responses
