"""Generic Triton Python-backend runtime for Hugging Face Transformers checkpoints.

The builder copies this one file into every Python model of a generated repository as `model.py`; the
model's `config.pbtxt` parameter `role` picks, once at load, the class that serves it:

- `EncoderRole` (`encoder`): tokenizer + forward pass + post-processing for text-classification (with an
  optional TEXT_PAIR), text-ranking (QUERY + TEXT -> SCORE), token-classification, feature-extraction and
  fill-mask (the `python` format; text pairs and cross-encoder scores are in ranking.py, copied next to
  this file for the two pair tasks);
- `GeneratorFront` (`generator`): decoupled text generation with continuous batching (the engine is in
  generation.py, copied next to this file);
- `OnnxTokenizerRole` / `OnnxPostprocessRole` (`tokenizer` / `postprocess`): the two Python halves around an
  ONNX model (the `onnx` format).

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

# OpenMP threads that wait for work spin by default. In a Triton stub they share the cores with the
# server's and the clients' threads, and a spinning thread holds a core the thread it waits for needs:
# measured on a 2-core CPU under load, two spinning threads made a pass 3-5x slower than waiting
# passively, and bfloat16 (oneDNN: many short parallel regions) lost its whole advantage over float32.
# It must be set before torch loads OpenMP; the stub imports this file before torch. A user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
    # Any split into k >= 2 passes costs at least k * overhead plus every sequence's own length; when one
    # pass costs no more than two overheads plus that, one pass is optimal and the search is skipped (the
    # usual case on a GPU, where the overhead is a whole batch: the search is O(count * max_group)).
    if 0 < count <= max_group and count * sorted_lengths[-1] - sum(sorted_lengths) <= overhead_tokens:
        return [order]
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


# Names a file read instead of /proc/cpuinfo: a test, or a whole suite run, stands in for another CPU
# with it (docs/testing.md: `MODELDEPLOY_CPUINFO=tests/cpuinfo/no-bf16 make test`).
CPUINFO_ENV = "MODELDEPLOY_CPUINFO"


def this_cpu_has_native_bfloat16() -> bool:
    """`cpu_has_native_bfloat16` of this machine's cpuinfo (or of the file MODELDEPLOY_CPUINFO names).
    True where there is no cpuinfo to read (not Linux): nothing to refuse on."""
    path = os.environ.get(CPUINFO_ENV) or "/proc/cpuinfo"
    cpuinfo = read_text(path)
    if cpuinfo is None and path != "/proc/cpuinfo":
        raise RuntimeError(f"{CPUINFO_ENV}={path} is not a readable file")
    return cpuinfo is None or cpu_has_native_bfloat16(cpuinfo)


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


def pool_hidden_states(hidden: Any, attention_mask: Any, pooling: str, normalize: bool) -> Any:
    """Sentence embeddings (float32 torch tensor) from [batch, length, hidden] states on any device, the
    way sentence-transformers pools. The encoder runs it where the model ran, so only [batch, hidden]
    leaves the device."""
    import torch

    hidden = hidden.float()
    mask = attention_mask.to(device=hidden.device, dtype=torch.float32).unsqueeze(-1)
    if pooling == "mean":
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    elif pooling == "max":
        pooled = hidden.masked_fill(mask == 0, -1e9).amax(dim=1)
    elif pooling == "lasttoken":
        last = attention_mask.to(hidden.device).sum(dim=1).long() - 1
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    else:
        pooled = hidden[:, 0]
    if normalize:
        pooled = pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return pooled


def pool_embeddings(hidden: Array, attention_mask: Array, pooling: str, normalize: bool) -> Array:
    """`pool_hidden_states` for numpy arrays (the ONNX post-processing and the build's accuracy gate)."""
    import torch

    states = torch.from_numpy(np.array(hidden, dtype=np.float32))
    mask = torch.from_numpy(np.array(attention_mask, dtype=np.int64))
    result: Array = pool_hidden_states(states, mask, pooling, normalize).numpy()
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


def _string_array(values: list[str], shape: tuple[int, ...]) -> Array:
    return np.array([value.encode("utf-8") for value in values], dtype=np.object_).reshape(shape)


def _response(outputs: dict[str, Array], first: int, count: int) -> Any:
    """One request's response: its rows of the batch's output arrays (views, not copies)."""
    part = slice(first, first + count)
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(n, a[part]) for n, a in outputs.items()]
    )


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
        else:
            self.device = torch.device("cpu")
            # Instances run side by side in their own processes: share the cores instead of having each
            # one start a thread per core and fight over them.
            instance_groups = self.model_config.get("instance_group", [])
            instances = sum(int(group.get("count", 1)) for group in instance_groups)
            cores = usable_cpus(len(os.sched_getaffinity(0)), read_text("/sys/fs/cgroup/cpu.max"))
            torch.set_num_threads(max(1, cores // max(1, instances)))

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
        model = quantize_int8(model, json.loads(params.get("int8_keep_float", "[]")))
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


def _scatter(batch: dict[str, Array], rows: list[int], part: dict[str, Array], total: int) -> None:
    """Write one forward pass's outputs into the batch's arrays at the rows of its texts."""
    for name, values in part.items():
        if name not in batch:
            batch[name] = np.empty((total, *values.shape[1:]), dtype=values.dtype)
        batch[name][rows] = values


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
                request_texts = _decode_texts(request, "TEXT")
                request_pairs: list[str | None] = [None] * len(request_texts)
                if pairs is not None:
                    request_pairs = pairs.read_pairs(
                        task, len(request_texts), _optional_texts(request), RequestError
                    )
            except RequestError as exc:
                self.responses[index] = _error_response(str(exc))
                continue
            self.owners.append((index, len(self.texts), len(request_texts)))
            self.texts.extend(request_texts)
            self.pairs.extend(request_pairs)

    def fail_unanswered(self, message: str) -> None:
        for index, _, _ in self.owners:
            if self.responses[index] is None:
                self.responses[index] = _error_response(message, fault=True)


class EncoderRole:
    """Tokenizer, forward passes and post-processing in one model. A batch of requests is handled as one:
    one tokenizer call, forward passes planned by length, outputs reduced on the device (pooling, mask
    positions) so that only what the client gets is copied back, written into one array per output for
    the whole batch; each request's response is its rows of those arrays."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = settings.device
        self.model = load_model(settings)
        # Text pairs and cross-encoder scores (ranking.py, copied beside this file for these tasks).
        self.pairs: Any = None
        if settings.task in ("text-classification", "text-ranking"):
            self.pairs = _load_sibling("ranking.py")
        self.input_names = [
            name
            for name in settings.tokenizer.model_input_names
            if name in ("input_ids", "attention_mask", "token_type_ids")
        ]
        self.outputs = TaskOutputs(settings)
        settings.log_accuracy()
        self.group_overhead = self._calibrate_group_overhead()
        settings.log_info(
            f"one forward pass costs as much as {self.group_overhead} tokens on {self.device}; batches are "
            "split by length accordingly"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        batch = DecodedRequests(requests, self.pairs, self.settings.task)
        if not batch.texts:
            return batch.responses
        try:
            outputs, failures = self.encode(batch.texts, batch.pairs)
            for index, first, count in batch.owners:
                bad = [failures[p] for p in range(first, first + count) if p in failures]
                batch.responses[index] = _error_response(bad[0]) if bad else _response(outputs, first, count)
        except Exception as exc:  # one bad batch must not take the server down
            batch.fail_unanswered(f"inference failed: {exc}")
        return batch.responses

    def encode(
        self, texts: list[str], pairs: list[str | None] | None = None
    ) -> tuple[dict[str, Array], dict[int, str]]:
        """The batch's output arrays (row = text) and the texts refused, with the reason; `pairs` holds
        each text's other text (None where it has none) for the tasks that take pairs."""
        import torch

        encoded = self.tokenize(texts, pairs)
        ids: list[list[int]] = encoded["input_ids"]
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
        groups = plan_length_groups(
            [len(ids[i]) for i in runnable], self.group_overhead, self.settings.max_batch
        )
        with torch.inference_mode():
            passes = self.forward_groups([[runnable[i] for i in group] for group in groups], encoded)
        batch: dict[str, Array] = {}
        for members, host in passes:
            _scatter(batch, members, self.host_outputs(members, host, encoded, texts), len(texts))
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
            input_ids = pad_batch([encoded["input_ids"][i] for i in members], self.settings.pad_id)
            lengths = np.array([len(encoded["input_ids"][i]) for i in members])
            attention = (np.arange(input_ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
            types = None
            if "token_type_ids" in encoded:
                types = pad_batch([encoded["token_type_ids"][i] for i in members], 0)
            output = self._forward(input_ids, attention, types)
            pending.append((members, self._reduce_on_device(output, attention, input_ids)))
        cuda = self.device.type == "cuda"
        copies = [
            (members, {k: v.to("cpu", non_blocking=cuda) for k, v in out.items()}) for members, out in pending
        ]
        self._synchronize()
        return [(members, {k: v.numpy() for k, v in out.items()}) for members, out in copies]

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
        filler = s.tokenizer(
            "calibration text for the batch planner " * 64,
            add_special_tokens=False,
            truncation=True,
            max_length=s.max_length,
        )
        token_ids = [int(t) for t in filler["input_ids"]] or [s.pad_id]
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
                    batch.responses[index] = _response(outputs, first, count)
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

        def tensor(name: str) -> Array:
            result: Array = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            return result

        try:
            attention = tensor("attention_mask")
            values = tensor(s.params["onnx_output"])
            if s.task == "text-classification":
                outputs = self.outputs.classification(values)
            elif s.task == "feature-extraction":
                outputs = self.outputs.embeddings(pool_embeddings(values, attention, s.pooling, s.normalize))
            elif s.task == "token-classification":
                counts = attention.sum(axis=1).astype(int).tolist()
                offsets, special = tensor("OFFSETS"), tensor("SPECIAL_TOKENS_MASK")
                outputs = self.outputs.entities(
                    values,
                    [[tuple(pair) for pair in offsets[row][:n].tolist()] for row, n in enumerate(counts)],
                    [special[row][:n].tolist() for row, n in enumerate(counts)],
                    _decode_texts(request, "TEXT"),
                )
            else:
                mask_hits = tensor("input_ids") == s.tokenizer.mask_token_id
                if not mask_hits.any(axis=1).all():
                    raise RequestError(
                        f"input TEXT must contain the mask token {s.tokenizer.mask_token} within its "
                        f"first {s.max_length} tokens"
                    )
                outputs = self.outputs.fill_mask(values[np.arange(values.shape[0]), mask_hits.argmax(axis=1)])
            return _response(outputs, 0, attention.shape[0])
        except RequestError as exc:
            return _error_response(str(exc))

    def finalize(self) -> None:
        pass


class GeneratorFront:
    """Decoupled text generation: requests go to the continuous-batching engine of generation.py, which
    sends their responses itself."""

    def __init__(self, settings: Settings) -> None:
        self.model_config, self.params = settings.model_config, settings.params
        self.tokenizer, self.max_length = settings.tokenizer, settings.max_length
        self.model = load_model(settings)
        settings.log_accuracy()
        self.generation = _start_generation(self, settings.args)

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self.generation.submit(request)

    def finalize(self) -> None:
        self.generation.stop()
        self.model = None


ROLES: dict[str, Any] = {
    "encoder": EncoderRole,
    "tokenizer": OnnxTokenizerRole,
    "postprocess": OnnxPostprocessRole,
    "generator": GeneratorFront,
}


class TritonPythonModel:
    """Triton's entry point: the role's class is chosen once, at load; every call goes to it."""

    def initialize(self, args: dict[str, str]) -> None:
        settings = Settings(args)
        self.role = ROLES[settings.params["role"]](settings)

    def execute(self, requests: list[Any]) -> list[Any] | None:
        result: list[Any] | None = self.role.execute(requests)
        return result

    def finalize(self) -> None:
        self.role.finalize()
