"""Generic Triton Python-backend runtime for Hugging Face Transformers checkpoints.

The builder copies this one file into every Python model of a generated repository as `model.py`; the
model's `config.pbtxt` parameters pick its role:

- `encoder`: tokenizer + forward pass + post-processing for text-classification, token-classification,
  feature-extraction and fill-mask (the `python` format);
- `generator`: decoupled text generation with continuous batching (the engine is in generation.py,
  copied next to this file);
- `tokenizer` / `postprocess`: the two Python halves around an ONNX model (the `onnx` format).

It must stay self-contained: it runs on a stock Triton image where only torch, transformers, numpy and
tokenizers are installed, so it imports nothing from `model_repo`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by tests that exercise the pure helpers
    pb_utils = None

Array = NDArray[Any]
ENCODER_TASKS = (
    "text-classification",
    "text-ranking",
    "token-classification",
    "feature-extraction",
    "fill-mask",
)
# Sequence lengths in the ONNX path are rounded up to this so that consecutive tokenizer batches
# produce few distinct shapes, which Triton's dynamic batcher in front of the ONNX model can merge.
ONNX_LENGTH_QUANTUM = 16
# The batch planner's fixed cost of a forward pass (in tokens) when it cannot be measured at load.
DEFAULT_GROUP_OVERHEAD_TOKENS = 96
CALIBRATION_PASS_SECONDS = 0.25


# ---------------------------------------------------------------------------------------------------
# Pure helpers (no Triton, no torch): batching plan, padding and task post-processing.
# ---------------------------------------------------------------------------------------------------


def plan_length_groups(lengths: list[int], overhead_tokens: int, max_group: int) -> list[list[int]]:
    """Split sequences into forward passes so that padding waste and per-pass overhead are minimal.

    Sequences are sorted by length and cut into contiguous runs; a run costs `overhead_tokens` (the fixed
    price of one forward pass, in token-equivalents) plus its size times its longest length (what padding
    to that length computes). A dynamic program finds the cheapest cut, so a batch of equal lengths stays
    one pass and a batch mixing 8- and 120-token texts is split. Returns lists of original indices.
    """
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    sorted_lengths = [lengths[index] for index in order]
    count = len(order)
    best = [0.0] + [math.inf] * count
    cut = [0] * (count + 1)
    for end in range(1, count + 1):
        for start in range(max(0, end - max_group), end):
            cost = best[start] + overhead_tokens + (end - start) * sorted_lengths[end - 1]
            if cost < best[end]:
                best[end] = cost
                cut[end] = start
    groups: list[list[int]] = []
    end = count
    while end > 0:
        start = cut[end]
        groups.append(order[start:end])
        end = start
    groups.reverse()
    return groups


def usable_cpus(affinity: int, cpu_max: str | None) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (`cpu.max`).

    A Kubernetes CPU limit is a quota, not an affinity: a pod limited to 4 CPUs on a 64-core node sees
    64 cores, and 64 torch threads on a 4-CPU quota get throttled most of the time.
    """
    if cpu_max:
        quota, _, period = cpu_max.strip().partition(" ")
        if quota != "max" and period:
            with_quota = math.ceil(int(quota) / int(period))
            return max(1, min(affinity, with_quota))
    return max(1, affinity)


def fit_pass_overhead(samples: list[tuple[int, float]], ceiling: int) -> int:
    """Fixed cost of one forward pass in token-equivalents, from (tokens, seconds) timings.

    The cost of one more token is the slope between the two largest passes (where a device runs at
    its full rate); the fixed cost is what the smallest pass takes beyond its tokens at that rate. A
    least-squares line would let the large passes' noise swamp the intercept. On a CPU the answer is a
    few dozen tokens for a real model (split a batch whenever padding would waste more than that); on
    a GPU below saturation a pass costs about the same whatever its size, and the answer is `ceiling`
    (keep the batch in one pass).
    """
    points = sorted(samples)
    if len(points) < 2 or points[-1][0] == points[-2][0]:
        return ceiling
    (tokens_before, seconds_before), (tokens_last, seconds_last) = points[-2], points[-1]
    per_token = (seconds_last - seconds_before) / (tokens_last - tokens_before)
    if per_token <= 0:
        return ceiling
    smallest_tokens, smallest_seconds = points[0]
    fixed = smallest_seconds - per_token * smallest_tokens
    return round(min(ceiling, max(1.0, fixed / per_token)))


def cpu_has_native_bfloat16(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo lists bfloat16 arithmetic (x86 avx512_bf16 or amx_bf16, Arm bf16).

    Without it PyTorch emulates bfloat16 on the CPU, slower than float32: serving it would cost more.
    """
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def quantize_int8(model: Any, keep_float: list[str] | tuple[str, ...] = ()) -> Any:
    """Dynamic int8 quantisation of the model's Linear layers (int8 weights per output channel, int8
    activations scaled per batch), except the layers named in `keep_float`.

    The builder's accuracy gate and the runtime both call this, so the served model is the measured one.
    """
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    kept = set(keep_float)
    layers = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name not in kept
    }
    with warnings.catch_warnings():
        # torch 2.15 announces torch.ao.quantization's move to torchao; the API still works unchanged.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, layers, dtype=torch.qint8)  # type: ignore[no-untyped-call]


def pad_batch(sequences: list[list[int]], pad_value: int, length: int | None = None) -> Array:
    width = length if length is not None else max(len(seq) for seq in sequences)
    out = np.full((len(sequences), width), pad_value, dtype=np.int64)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return out


def softmax(values: Array, axis: int = -1) -> Array:
    shifted = values - values.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    result: Array = exp / exp.sum(axis=axis, keepdims=True)
    return result


def classification_outputs(
    logits: Array, labels: list[str], multi_label: bool
) -> tuple[list[str], Array, Array]:
    """LABEL, SCORE, SCORES for a [batch, num_labels] logits array (transformers' pipeline rules)."""
    logits = logits.astype(np.float32)
    if multi_label or logits.shape[-1] == 1:
        scores = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    else:
        scores = softmax(logits).astype(np.float32)
    best = scores.argmax(axis=-1)
    return [labels[i] for i in best], scores.max(axis=-1).astype(np.float32), scores


def _split_tag(label: str) -> tuple[str, str]:
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def token_entities(
    logits: Array,
    offsets: list[tuple[int, int]],
    special: list[int],
    text: str,
    labels: list[str],
) -> list[dict[str, Any]]:
    """Entities of one sequence, grouped like transformers' `aggregation_strategy="simple"`.

    Consecutive tokens with the same entity type join unless a token starts a new entity (`B-`);
    the group's score is the mean of its tokens' scores; `O` groups are dropped; `word` is the span of
    the original text.
    """
    count = len(offsets)
    probabilities = softmax(logits[:count].astype(np.float32))
    tokens = []
    for index in range(count):
        if special[index]:
            continue
        label_id = int(probabilities[index].argmax())
        tokens.append(
            (labels[label_id], float(probabilities[index][label_id]), offsets[index][0], offsets[index][1])
        )
    groups: list[list[tuple[str, float, int, int]]] = []
    for token in tokens:
        if groups:
            bi, tag = _split_tag(token[0])
            _, last_tag = _split_tag(groups[-1][-1][0])
            if tag == last_tag and bi != "B":
                groups[-1].append(token)
                continue
        groups.append([token])
    entities = []
    for group in groups:
        tag = group[0][0].split("-", 1)[-1]
        if tag == "O":
            continue
        start, end = group[0][2], group[-1][3]
        entities.append(
            {
                "entity_group": tag,
                "score": float(np.mean([token[1] for token in group])),
                "word": text[start:end],
                "start": int(start),
                "end": int(end),
            }
        )
    return entities


def pool_embeddings(hidden: Array, attention_mask: Array, pooling: str, normalize: bool) -> Array:
    """Sentence embeddings from [batch, length, hidden] states, the way sentence-transformers pools."""
    hidden = hidden.astype(np.float32)
    mask = attention_mask.astype(np.float32)[:, :, None]
    if pooling == "mean":
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    elif pooling == "max":
        pooled = np.where(mask > 0, hidden, -1e9).max(axis=1)
    elif pooling == "lasttoken":
        last = attention_mask.sum(axis=1).astype(np.int64) - 1
        pooled = hidden[np.arange(hidden.shape[0]), last]
    else:
        pooled = hidden[:, 0]
    if normalize:
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    result: Array = pooled.astype(np.float32)
    return result


def top_k_tokens(mask_logits: Array, top_k: int) -> tuple[Array, Array]:
    """Token ids and probabilities of the `top_k` best fillers for [batch, vocab] mask logits."""
    probabilities = softmax(mask_logits.astype(np.float32))
    ids = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top_k]
    return ids, np.take_along_axis(probabilities, ids, axis=-1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Triton glue.
# ---------------------------------------------------------------------------------------------------


class RequestError(ValueError):
    """A problem with one request that its client must fix; it fails that request only, as INVALID_ARG
    (HTTP 400, gRPC INVALID_ARGUMENT). The message names the input and the rule it breaks."""


def _parameters(model_config: dict[str, Any]) -> dict[str, str]:
    raw = model_config.get("parameters", {})
    return {key: str(value.get("string_value", "")) for key, value in raw.items()}


def _decode_texts(request: Any, name: str) -> list[str]:
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


def _optional_texts(request: Any) -> Any:
    """`name` -> that input's texts, or None if the request does not send it."""

    def texts_of(name: str) -> list[str] | None:
        if pb_utils.get_input_tensor_by_name(request, name) is None:
            return None
        return _decode_texts(request, name)

    return texts_of


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except OSError:
        return None


def _error_response(message: str, fault: bool = False) -> Any:
    """A failed response. Triton turns the code into the status: INVALID_ARG (the default, for a request
    its client must fix) is HTTP 400 / gRPC INVALID_ARGUMENT; a `fault` of the server is INTERNAL (HTTP
    500), which retries, dashboards and autoscalers count as ours."""
    code = pb_utils.TritonError.INTERNAL if fault else pb_utils.TritonError.INVALID_ARG
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def _string_tensor(name: str, values: list[str], shape: tuple[int, ...]) -> Any:
    array = np.array([value.encode("utf-8") for value in values], dtype=np.object_).reshape(shape)
    return pb_utils.Tensor(name, array)


def _load_sibling(file_name: str) -> Any:
    """A runtime module copied next to this file, loaded by path: Triton imports model.py as a file, not
    as part of a package."""
    import importlib.util

    name = "modeldeploy_" + file_name.removesuffix(".py")
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(os.path.dirname(os.path.abspath(__file__)), file_name)
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _start_generation(runtime: Any, args: dict[str, str]) -> Any:
    """The continuous-batching engine of generation.py."""
    generation = _load_sibling("generation.py")
    params = runtime.params
    name = runtime.model_config.get("name", "model")
    metrics = generation.GenerationMetrics(name, args.get("model_version", "1")) if pb_utils else None
    return generation.GenerationEngine(
        runtime.model,
        runtime.tokenizer,
        context=runtime.max_length,
        max_sequences=int(params["max_concurrent_sequences"]),
        max_queued=int(params["max_queued_requests"]),
        max_tokens_limit=int(params["max_tokens_limit"]),
        default_max_tokens=int(params["default_max_tokens"]),
        metrics=metrics,
        log=pb_utils.Logger.log_warn if pb_utils else print,
    )


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import torch

        self.model_config: dict[str, Any] = json.loads(args["model_config"])
        self.params = _parameters(self.model_config)
        self.role = self.params["role"]
        self.task = self.params["task"]
        self.checkpoint = os.path.join(args["model_repository"], args["model_version"], "checkpoint")
        self.max_length = int(self.params["max_sequence_length"])
        self.labels: list[str] = json.loads(self.params.get("labels", "[]"))
        self.pooling = self.params.get("pooling", "cls")
        self.normalize = self.params.get("normalize", "false") == "true"
        self.top_k = int(self.params.get("top_k", "5"))
        self.multi_label = self.params.get("problem_type") == "multi_label_classification"
        self.ranking_activation = self.params.get("ranking_activation", "sigmoid")
        # Text pairs (ranking.py): the role encoder of the tasks that take them.
        self.pairs: Any = None
        self.max_batch = max(1, int(self.model_config.get("max_batch_size", 1)))
        trust = self.params.get("trust_remote_code", "false") == "true"

        if args.get("model_instance_kind") == "GPU":
            self.device = torch.device("cuda", int(args.get("model_instance_device_id", "0")))
        else:
            self.device = torch.device("cpu")
            # Instances run side by side in their own processes: share the cores instead of having each
            # one start a thread per core and fight over them.
            instance_groups = self.model_config.get("instance_group", [])
            instances = sum(int(group.get("count", 1)) for group in instance_groups)
            cores = usable_cpus(len(os.sched_getaffinity(0)), read_text("/sys/fs/cgroup/cpu.max"))
            torch.set_num_threads(max(1, cores // max(1, instances)))

        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.checkpoint, trust_remote_code=trust)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        self.model: Any = None
        self.generation: Any = None
        if self.role in ("encoder", "generator"):
            self._load_model(trust)
        if self.role == "encoder" and self.task in ("text-classification", "text-ranking"):
            self.pairs = _load_sibling("ranking.py")
        self._log_accuracy(os.path.join(args["model_repository"], "..", "accuracy.json"))
        if self.role == "generator":
            self.generation = _start_generation(self, args)
        self.group_overhead = DEFAULT_GROUP_OVERHEAD_TOKENS
        if self.role == "encoder":
            self.group_overhead = self._calibrate_group_overhead()
            if pb_utils is not None:
                pb_utils.Logger.log_info(
                    f"{self.model_config.get('name', 'model')}: one forward pass costs as much as "
                    f"{self.group_overhead} tokens on {self.device}; batches are split by length accordingly"
                )

    def _load_model(self, trust: bool) -> None:
        import torch
        import transformers

        auto_class = {
            "text-classification": transformers.AutoModelForSequenceClassification,
            "text-ranking": transformers.AutoModelForSequenceClassification,
            "token-classification": transformers.AutoModelForTokenClassification,
            "feature-extraction": transformers.AutoModel,
            "fill-mask": transformers.AutoModelForMaskedLM,
            "text-generation": transformers.AutoModelForCausalLM,
        }[self.task]
        dtype_name = self.params.get("dtype", "float32")
        if dtype_name == "bfloat16" and self.device.type == "cpu":
            cpuinfo = read_text("/proc/cpuinfo")
            if cpuinfo is not None and not cpu_has_native_bfloat16(cpuinfo):
                raise RuntimeError(
                    "spec.triton.dtype bfloat16: this node's CPU has no bfloat16 instructions (avx512_bf16, "
                    "amx_bf16 or bf16), so PyTorch would emulate it, slower than float32; schedule on a CPU "
                    "that has them or use float32 (or quantization int8)"
                )
        dtype = getattr(torch, dtype_name)
        self.model = auto_class.from_pretrained(self.checkpoint, dtype=dtype, trust_remote_code=trust)
        self.model.to(self.device).eval()
        if self.params.get("quantization", "none") == "int8":
            self.model = quantize_int8(self.model, json.loads(self.params.get("int8_keep_float", "[]")))
        self.input_names = [
            name
            for name in self.tokenizer.model_input_names
            if name in ("input_ids", "attention_mask", "token_type_ids")
        ]

    def _log_accuracy(self, path: str) -> None:
        """Log the build's accuracy gate result (an optimised repository carries one) at load."""
        text = read_text(path)
        if text is None or pb_utils is None or self.role not in ("encoder", "generator", "postprocess"):
            return
        result = json.loads(text)
        gate = result.get("gate", {})
        pb_utils.Logger.log_info(
            f"{self.model_config.get('name', 'model')}: serving {json.dumps(result.get('optimisation'))}; "
            f"the build measured it against float32 on {result.get('texts')} texts: "
            f"{json.dumps(result.get('metrics'))}; gate {gate.get('metric')} >= {gate.get('floor')}"
        )

    def _calibrate_group_overhead(self) -> int:
        """Time forward passes from one short text up to a full batch on this instance's device and fit
        the fixed cost of a pass (see `fit_pass_overhead`).

        The shapes span the passes the planner chooses between: small passes are inefficient on a CPU
        in ways a fit over small shapes alone underrates. Each shape runs three times and its fastest run
        counts, so a momentarily busy machine skews the fit less; shapes stop growing once a pass takes
        longer than CALIBRATION_PASS_SECONDS, which bounds the time a large model spends on this at load.
        """
        import torch

        ceiling = self.max_batch * self.max_length
        filler = self.tokenizer(
            "calibration text for the batch planner " * 64,
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_length,
        )
        token_ids = [int(t) for t in filler["input_ids"]] or [self.pad_id]
        short, long = min(16, self.max_length), min(64, self.max_length)
        rows = sorted({min(count, self.max_batch) for count in (1, 4, 16, self.max_batch)})
        shapes = [(1, short)] + [(count, long) for count in rows]
        samples: list[tuple[int, float]] = []
        with torch.inference_mode():
            for batch, length in shapes:
                ids = np.array([(token_ids * length)[:length]] * batch, dtype=np.int64)
                best = math.inf
                for _ in range(3):
                    started = time.perf_counter()
                    self._forward(ids, np.ones_like(ids), None)
                    best = min(best, time.perf_counter() - started)
                samples.append((batch * length, best))
                if best > CALIBRATION_PASS_SECONDS and len(samples) >= 2:
                    break
        return fit_pass_overhead(samples, ceiling)

    def _forward(self, input_ids: Array, attention: Array, token_types: Array | None) -> Any:
        """One padded forward pass; returns the model's output with its first tensor synchronised."""
        import torch

        inputs = {
            "input_ids": torch.from_numpy(input_ids).to(self.device),
            "attention_mask": torch.from_numpy(attention).to(self.device),
        }
        if "token_type_ids" in self.input_names:
            types = token_types if token_types is not None else np.zeros_like(input_ids)
            inputs["token_type_ids"] = torch.from_numpy(types).to(self.device)
        output = self.model(**inputs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return output

    # -- encoder ------------------------------------------------------------------------------------

    def execute(self, requests: list[Any]) -> list[Any] | None:
        if self.role == "generator":
            for request in requests:
                self.generation.submit(request)
            return None
        if self.role == "postprocess":
            return [self._postprocess_request(request) for request in requests]
        responses: list[Any] = [None] * len(requests)
        texts: list[str] = []
        pairs: list[str | None] = []  # each text's other text (ranking.py), None where it has none
        owners: list[tuple[int, int, int]] = []  # request index, first text, text count
        for index, request in enumerate(requests):
            try:
                request_texts = _decode_texts(request, "TEXT")
                request_pairs: list[str | None] = [None] * len(request_texts)
                if self.pairs is not None:
                    request_pairs = self.pairs.read_pairs(
                        self.task, len(request_texts), _optional_texts(request), RequestError
                    )
            except RequestError as exc:
                responses[index] = _error_response(str(exc))
                continue
            owners.append((index, len(texts), len(request_texts)))
            texts.extend(request_texts)
            pairs.extend(request_pairs)
        if texts:
            try:
                if self.role == "tokenizer":
                    self._tokenize_for_onnx(requests, owners, texts, responses)
                else:
                    self._run_encoder(owners, texts, responses, pairs)
            except Exception as exc:  # one bad batch must not take the server down
                for index, _, _ in owners:
                    if responses[index] is None:
                        responses[index] = _error_response(f"inference failed: {exc}", fault=True)
        return responses

    def _tokenize(self, texts: list[str], offsets: bool, pairs: list[str | None] | None = None) -> Any:
        options = {
            "max_length": self.max_length,
            "padding": False,
            "return_attention_mask": False,
            "return_token_type_ids": "token_type_ids" in self.tokenizer.model_input_names,
            "return_offsets_mapping": offsets,
            "return_special_tokens_mask": offsets,
        }
        if pairs is not None and any(pair is not None for pair in pairs):
            return self.pairs.tokenize_pairs(self.tokenizer, self.task, texts, pairs, **options)
        return self.tokenizer(texts, truncation=True, **options)

    def _run_encoder(
        self,
        owners: list[tuple[int, int, int]],
        texts: list[str],
        responses: list[Any],
        pairs: list[str | None] | None = None,
    ) -> None:
        import torch

        needs_offsets = self.task == "token-classification"
        encoded = self._tokenize(texts, needs_offsets, pairs)
        ids: list[list[int]] = encoded["input_ids"]
        per_text: list[dict[str, Any] | None] = [None] * len(texts)
        failures: dict[int, str] = {}
        if self.task == "fill-mask":
            mask_id = self.tokenizer.mask_token_id
            for position, seq in enumerate(ids):
                if mask_id not in seq:
                    failures[position] = (
                        f"input TEXT must contain the mask token {self.tokenizer.mask_token} within its "
                        f"first {self.max_length} tokens"
                    )
        runnable = [position for position in range(len(texts)) if position not in failures]
        groups = plan_length_groups([len(ids[i]) for i in runnable], self.group_overhead, self.max_batch)
        with torch.inference_mode():
            for group in groups:
                members = [runnable[i] for i in group]
                input_ids = pad_batch([ids[i] for i in members], self.pad_id)
                attention = np.zeros_like(input_ids)
                for row, member in enumerate(members):
                    attention[row, : len(ids[member])] = 1
                types = None
                if "token_type_ids" in encoded:
                    types = pad_batch([encoded["token_type_ids"][i] for i in members], 0)
                output = self._forward(input_ids, attention, types)
                self._postprocess_group(members, output, attention, input_ids, encoded, texts, per_text)
        for index, first, count in owners:
            bad = [failures[p] for p in range(first, first + count) if p in failures]
            if bad:
                responses[index] = _error_response(bad[0])
                continue
            responses[index] = self._encoder_response([per_text[p] for p in range(first, first + count)])

    def _postprocess_group(
        self,
        members: list[int],
        output: Any,
        attention: Array,
        input_ids: Array,
        encoded: Any,
        texts: list[str],
        per_text: list[dict[str, Any] | None],
    ) -> None:
        import torch

        if self.task == "text-classification":
            logits = output.logits.float().cpu().numpy()
            names, best, scores = classification_outputs(logits, self.labels, self.multi_label)
            for row, member in enumerate(members):
                per_text[member] = {"LABEL": names[row], "SCORE": best[row], "SCORES": scores[row]}
        elif self.task == "text-ranking":
            logits = output.logits.float().cpu().numpy()
            relevance = self.pairs.relevance_scores(logits, self.ranking_activation)
            for row, member in enumerate(members):
                per_text[member] = {"SCORE": relevance[row]}
        elif self.task == "feature-extraction":
            hidden = output.last_hidden_state.float().cpu().numpy()
            pooled = pool_embeddings(hidden, attention, self.pooling, self.normalize)
            for row, member in enumerate(members):
                per_text[member] = {"EMBEDDING": pooled[row]}
        elif self.task == "token-classification":
            logits = output.logits.float().cpu().numpy()
            for row, member in enumerate(members):
                entities = token_entities(
                    logits[row],
                    encoded["offset_mapping"][member],
                    encoded["special_tokens_mask"][member],
                    texts[member],
                    self.labels,
                )
                per_text[member] = {"ENTITIES": json.dumps(entities)}
        else:  # fill-mask: only the first mask position of each text leaves the device
            positions = torch.from_numpy((input_ids == self.tokenizer.mask_token_id).argmax(axis=1))
            rows = torch.arange(len(members))
            mask_logits = output.logits[rows, positions.to(output.logits.device)].float().cpu().numpy()
            token_ids, probabilities = top_k_tokens(mask_logits, self.top_k)
            for row, member in enumerate(members):
                tokens = [self.tokenizer.decode([int(t)]) for t in token_ids[row]]
                per_text[member] = {"TOKENS": tokens, "SCORES": probabilities[row]}

    def _encoder_response(self, results: list[dict[str, Any] | None]) -> Any:
        rows = [result for result in results if result is not None]
        count = len(rows)
        tensors = []
        if self.task == "text-classification":
            tensors = [
                _string_tensor("LABEL", [r["LABEL"] for r in rows], (count, 1)),
                pb_utils.Tensor(
                    "SCORE", np.array([r["SCORE"] for r in rows], dtype=np.float32).reshape(count, 1)
                ),
                pb_utils.Tensor("SCORES", np.stack([r["SCORES"] for r in rows]).astype(np.float32)),
            ]
        elif self.task == "text-ranking":
            scores = np.array([r["SCORE"] for r in rows], dtype=np.float32).reshape(count, 1)
            tensors = [pb_utils.Tensor("SCORE", scores)]
        elif self.task == "feature-extraction":
            tensors = [
                pb_utils.Tensor("EMBEDDING", np.stack([r["EMBEDDING"] for r in rows]).astype(np.float32))
            ]
        elif self.task == "token-classification":
            tensors = [_string_tensor("ENTITIES", [r["ENTITIES"] for r in rows], (count, 1))]
        else:
            tokens = [token for r in rows for token in r["TOKENS"]]
            tensors = [
                _string_tensor("TOKENS", tokens, (count, self.top_k)),
                pb_utils.Tensor("SCORES", np.stack([r["SCORES"] for r in rows]).astype(np.float32)),
            ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    # -- onnx ensemble halves -------------------------------------------------------------------------

    def _tokenize_for_onnx(
        self, requests: list[Any], owners: list[tuple[int, int, int]], texts: list[str], responses: list[Any]
    ) -> None:
        encoded = self._tokenize(texts, offsets=True)
        ids: list[list[int]] = encoded["input_ids"]
        longest = max(len(seq) for seq in ids)
        width = max(longest, min(-(-longest // ONNX_LENGTH_QUANTUM) * ONNX_LENGTH_QUANTUM, self.max_length))
        input_ids = pad_batch(ids, self.pad_id, width)
        attention = np.zeros_like(input_ids)
        offsets = np.zeros((len(ids), width, 2), dtype=np.int64)
        special = np.ones_like(input_ids)
        for row, seq in enumerate(ids):
            attention[row, : len(seq)] = 1
            offsets[row, : len(seq)] = encoded["offset_mapping"][row]
            special[row, : len(seq)] = encoded["special_tokens_mask"][row]
        types = pad_batch(encoded["token_type_ids"], 0, width) if "token_type_ids" in encoded else None
        produced = {"input_ids": input_ids, "attention_mask": attention, "OFFSETS": offsets}
        produced["SPECIAL_TOKENS_MASK"] = special
        if types is not None:
            produced["token_type_ids"] = types
        declared = [output["name"] for output in self.model_config["output"]]
        for index, first, count in owners:
            part = slice(first, first + count)
            tensors = [pb_utils.Tensor(name, produced[name][part]) for name in declared]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)

    def _postprocess_request(self, request: Any) -> Any:
        try:
            attention = pb_utils.get_input_tensor_by_name(request, "attention_mask").as_numpy()
            output_name = self.params["onnx_output"]
            values = pb_utils.get_input_tensor_by_name(request, output_name).as_numpy()
            results: list[dict[str, Any] | None] = []
            if self.task == "text-classification":
                names, best, scores = classification_outputs(values, self.labels, self.multi_label)
                results = [
                    {"LABEL": n, "SCORE": b, "SCORES": s} for n, b, s in zip(names, best, scores, strict=True)
                ]
            elif self.task == "feature-extraction":
                pooled = pool_embeddings(values, attention, self.pooling, self.normalize)
                results = [{"EMBEDDING": row} for row in pooled]
            elif self.task == "token-classification":
                texts = _decode_texts(request, "TEXT")
                offsets = pb_utils.get_input_tensor_by_name(request, "OFFSETS").as_numpy()
                special = pb_utils.get_input_tensor_by_name(request, "SPECIAL_TOKENS_MASK").as_numpy()
                for row, text in enumerate(texts):
                    count = int(attention[row].sum())
                    entities = token_entities(
                        values[row],
                        [tuple(pair) for pair in offsets[row][:count].tolist()],
                        special[row][:count].tolist(),
                        text,
                        self.labels,
                    )
                    results.append({"ENTITIES": json.dumps(entities)})
            else:
                input_ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
                mask_hits = input_ids == self.tokenizer.mask_token_id
                if not mask_hits.any(axis=1).all():
                    raise RequestError(
                        f"input TEXT must contain the mask token {self.tokenizer.mask_token} within its "
                        f"first {self.max_length} tokens"
                    )
                positions = mask_hits.argmax(axis=1)
                mask_logits = values[np.arange(values.shape[0]), positions]
                token_ids, probabilities = top_k_tokens(mask_logits, self.top_k)
                results = [
                    {
                        "TOKENS": [self.tokenizer.decode([int(t)]) for t in token_ids[row]],
                        "SCORES": probabilities[row],
                    }
                    for row in range(len(token_ids))
                ]
            return self._encoder_response(results)
        except RequestError as exc:
            return _error_response(str(exc))

    def finalize(self) -> None:
        if self.generation is not None:
            self.generation.stop()
        self.model = None
