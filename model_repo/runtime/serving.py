"""What every role of the Python-backend runtime shares: Triton's arguments parsed once (`Settings`), the
model loaded for its task, the requests' texts decoded, the task's output arrays and the responses.

Copied beside model.py into every Python model and imported through the package model.py makes of its
directory; like model.py it imports only numpy (torch and transformers when a model loads).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from .helpers import (
    Array,
    classification_outputs,
    quantize_int8,
    read_smoothing,
    read_text,
    this_cpu_has_native_bfloat16,
    token_entities,
    top_k_tokens,
    usable_cpus,
)

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by tests that exercise the pure helpers
    pb_utils = None

ENCODER_TASKS = (
    "text-classification",
    "text-ranking",
    "token-classification",
    "feature-extraction",
    "fill-mask",
)


class RequestError(ValueError):
    """A problem with one request that its client must fix; it fails that request only, as INVALID_ARG
    (HTTP 400, gRPC INVALID_ARGUMENT). The message names the input and the rule it breaks."""


def _parameters(model_config: dict[str, Any]) -> dict[str, str]:
    raw = model_config.get("parameters", {})
    return {key: str(value.get("string_value", "")) for key, value in raw.items()}


def decode_texts(request: Any, name: str) -> list[str]:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise RequestError(f"input {name} is required")
    texts = []
    for position, item in enumerate(tensor.as_numpy().reshape(-1)):
        if isinstance(item, bytes):
            try:
                text = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RequestError(
                    f"input {name} item {position} must be UTF-8 text: byte 0x{item[exc.start]:02x} at "
                    f"offset {exc.start} is not valid UTF-8"
                ) from exc
        else:
            text = str(item)
        if not text.strip():
            kind = "empty" if not text else "whitespace only"
            raise RequestError(f"input {name} item {position} must be non-empty text, got {kind}")
        texts.append(text)
    if not texts:
        raise RequestError(f"input {name} must hold at least one text")
    return texts


def input_array(request: Any, name: str) -> Array:
    """The request's input `name` as a numpy array (the caller knows the request sends it)."""
    result: Array = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
    return result


def _optional_texts(request: Any) -> Any:
    """`name` -> that input's texts, or None if the request does not send it."""

    def texts_of(name: str) -> list[str] | None:
        if pb_utils.get_input_tensor_by_name(request, name) is None:
            return None
        return decode_texts(request, name)

    return texts_of


def error_response(message: str, fault: bool = False) -> Any:
    """A failed response. Triton turns the code into the status: INVALID_ARG (the default, for a request
    its client must fix) is HTTP 400 / gRPC INVALID_ARGUMENT; a `fault` of the server is INTERNAL (HTTP
    500), which retries, dashboards and autoscalers count as ours."""
    code = pb_utils.TritonError.INTERNAL if fault else pb_utils.TritonError.INVALID_ARG
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def _string_array(values: list[str], shape: tuple[int, ...]) -> Array:
    return np.array([value.encode("utf-8") for value in values], dtype=np.object_).reshape(shape)


def response(outputs: dict[str, Array], first: int, count: int) -> Any:
    """One request's response: its rows of the batch's output arrays (views, not copies)."""
    part = slice(first, first + count)
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(n, a[part]) for n, a in outputs.items()]
    )


def tokenizer_options(tokenizer: Any, max_length: int, offsets: bool) -> dict[str, Any]:
    """How the encoder and the ONNX tokenizer call the tokenizer (texts alone or in pairs): unpadded (the
    encoder pads per forward pass, the ONNX tokenizer to a length quantum), truncated to `max_length`."""
    return {
        "max_length": max_length,
        "padding": False,
        "return_attention_mask": False,
        "return_token_type_ids": "token_type_ids" in tokenizer.model_input_names,
        "return_offsets_mapping": offsets,
        "return_special_tokens_mask": offsets,
    }


def tokenize_texts(tokenizer: Any, texts: list[str], max_length: int, offsets: bool) -> Any:
    """The one place the encoder and the ONNX tokenizer turn single texts into token ids."""
    return tokenizer(texts, truncation=True, **tokenizer_options(tokenizer, max_length, offsets))


class Settings:
    """What every role reads from Triton's arguments and its model's config.pbtxt, parsed once at load."""

    def __init__(self, args: dict[str, str]) -> None:
        import torch

        self.args = args
        self.model_config: dict[str, Any] = json.loads(args["model_config"])
        self.params = _parameters(self.model_config)
        self.name = str(self.model_config.get("name", "model"))
        self.task = self.params["task"]
        self.checkpoint = os.path.join(args["model_repository"], args["model_version"], "checkpoint")
        self.max_length = int(self.params["max_sequence_length"])
        self.labels: list[str] = json.loads(self.params.get("labels", "[]"))
        self.pooling = self.params.get("pooling", "cls")
        self.normalize = self.params.get("normalize", "false") == "true"
        self.top_k = int(self.params.get("top_k", "5"))
        self.multi_label = self.params.get("problem_type") == "multi_label_classification"
        self.ranking_activation = self.params.get("ranking_activation", "sigmoid")
        self.max_batch = max(1, int(self.model_config.get("max_batch_size", 1)))
        self.trust = self.params.get("trust_remote_code", "false") == "true"
        if args.get("model_instance_kind") == "GPU":
            self.device = torch.device("cuda", int(args.get("model_instance_device_id", "0")))
            self.cpu_threads = torch.get_num_threads()
        else:
            self.device = torch.device("cpu")
            # Instances run side by side in their own processes: share the cores instead of having each
            # one start a thread per core and fight over them.
            instance_groups = self.model_config.get("instance_group", [])
            instances = sum(int(group.get("count", 1)) for group in instance_groups)
            cores = usable_cpus(len(os.sched_getaffinity(0)), read_text("/sys/fs/cgroup/cpu.max"))
            self.cpu_threads = max(1, cores // max(1, instances))
            torch.set_num_threads(self.cpu_threads)

        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.checkpoint, trust_remote_code=self.trust)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0

    def log_info(self, message: str) -> None:
        if pb_utils is not None:
            pb_utils.Logger.log_info(f"{self.name}: {message}")

    def log_accuracy(self) -> None:
        """Log the build's accuracy gate result (an optimised repository carries one) at load."""
        text = read_text(os.path.join(self.args["model_repository"], "..", "accuracy.json"))
        if text is None:
            return
        result = json.loads(text)
        gate = result.get("gate", {})
        self.log_info(
            f"serving {json.dumps(result.get('optimisation'))}; "
            f"the build measured it against float32 on {result.get('texts')} texts: "
            f"{json.dumps(result.get('metrics'))}; gate {gate.get('metric')} >= {gate.get('floor')}"
        )


def load_model(settings: Settings) -> Any:
    """The checkpoint's model for its task, in the config's dtype (and int8 where asked), on the device."""
    import torch
    import transformers

    auto_class = {
        "text-classification": transformers.AutoModelForSequenceClassification,
        "text-ranking": transformers.AutoModelForSequenceClassification,
        "token-classification": transformers.AutoModelForTokenClassification,
        "feature-extraction": transformers.AutoModel,
        "fill-mask": transformers.AutoModelForMaskedLM,
        "text-generation": transformers.AutoModelForCausalLM,
    }[settings.task]
    params = settings.params
    dtype_name = params.get("dtype", "float32")
    if dtype_name == "bfloat16" and settings.device.type == "cpu" and not this_cpu_has_native_bfloat16():
        raise RuntimeError(
            "spec.triton.dtype bfloat16: this node's CPU has no bfloat16 instructions (avx512_bf16, "
            "amx_bf16 or bf16), so PyTorch would emulate it, slower than float32; schedule on a CPU "
            "that has them or use float32 (or quantization int8)"
        )
    dtype = getattr(torch, dtype_name)
    model = auto_class.from_pretrained(settings.checkpoint, dtype=dtype, trust_remote_code=settings.trust)
    model.to(settings.device).eval()
    if params.get("quantization", "none") == "int8":
        smoothing_file = params.get("int8_smoothing")
        smoothing = (
            read_smoothing(os.path.join(os.path.dirname(settings.checkpoint), smoothing_file))
            if smoothing_file
            else None
        )
        model = quantize_int8(model, json.loads(params.get("int8_keep_float", "[]")), smoothing)
    return model


class TaskOutputs:
    """The task's output arrays for many texts at once, from host arrays of model outputs: the encoder and
    the ONNX post-processing share them. Each array's first dimension is the text."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._token_texts: dict[int, str] = {}

    def classification(self, logits: Array) -> dict[str, Array]:
        s = self.settings
        names, best, scores = classification_outputs(logits, s.labels, s.multi_label)
        count = len(names)
        return {"LABEL": _string_array(names, (count, 1)), "SCORE": best.reshape(count, 1), "SCORES": scores}

    def ranking(self, relevance: Array) -> dict[str, Array]:
        return {"SCORE": np.ascontiguousarray(relevance, dtype=np.float32).reshape(-1, 1)}

    def embeddings(self, pooled: Array) -> dict[str, Array]:
        return {"EMBEDDING": np.ascontiguousarray(pooled, dtype=np.float32)}

    def entities(
        self, logits: Array, offsets: list[Any], special: list[Any], texts: list[str]
    ) -> dict[str, Array]:
        rows = [
            json.dumps(token_entities(logits[row], offsets[row], special[row], text, self.settings.labels))
            for row, text in enumerate(texts)
        ]
        return {"ENTITIES": _string_array(rows, (len(rows), 1))}

    def fill_mask(self, mask_logits: Array) -> dict[str, Array]:
        token_ids, probabilities = top_k_tokens(mask_logits, self.settings.top_k)
        tokens = [self._token_text(int(token)) for token in token_ids.reshape(-1)]
        return {"TOKENS": _string_array(tokens, token_ids.shape), "SCORES": probabilities}

    def _token_text(self, token: int) -> str:
        text = self._token_texts.get(token)
        if text is None:
            text = str(self.settings.tokenizer.decode([token]))
            self._token_texts[token] = text
        return text


class DecodedRequests:
    """The texts of a batch of requests (with each text's other text where the task takes pairs), which
    request owns which, and the responses so far (a request with a bad input already has its error)."""

    def __init__(self, requests: list[Any], pairs: Any = None, task: str = "") -> None:
        self.responses: list[Any] = [None] * len(requests)
        self.texts: list[str] = []
        self.pairs: list[str | None] = []  # each text's other text (ranking.py), None where it has none
        self.owners: list[tuple[int, int, int]] = []  # request index, first text, text count
        for index, request in enumerate(requests):
            try:
                request_texts = decode_texts(request, "TEXT")
                request_pairs: list[str | None] = [None] * len(request_texts)
                if pairs is not None:
                    request_pairs = pairs.read_pairs(
                        task, len(request_texts), _optional_texts(request), RequestError
                    )
            except RequestError as exc:
                self.responses[index] = error_response(str(exc))
                continue
            self.owners.append((index, len(self.texts), len(request_texts)))
            self.texts.extend(request_texts)
            self.pairs.extend(request_pairs)

    def fail_unanswered(self, message: str) -> None:
        for index, _, _ in self.owners:
            if self.responses[index] is None:
                self.responses[index] = error_response(message, fault=True)
