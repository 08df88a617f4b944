"""The generation runtime's request contract: what a request may set, validated, with messages that name
the input and the rule (Triton INVALID_ARG). Pure except `parse_request`, which reads a Triton request.

Copied beside `model.py` with generation.py, which imports it (and re-exports its names).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by tests that exercise the pure helpers
    pb_utils = None

from . import decoding

Sampling = decoding.Sampling

# Parameters a request may set in `sampling_parameters` (JSON) or as request parameters (the JSON body's
# `parameters` on /generate); the individual input tensors of the same names win over both.
SAMPLING_KEYS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stop_words",
    "stop_token_ids",
    "truncate_prompt_tokens",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
    "min_tokens",
    "logprobs",
    "top_logprobs",
)
REQUEST_PARAMETER_KEYS = (*SAMPLING_KEYS, "stream", "exclude_input_in_output")
# What a checkpoint's generation_config.json may set as a default for requests that leave it out.
GENERATION_CONFIG_DEFAULTS = ("temperature", "top_p", "top_k", "repetition_penalty")
MAX_SEED = 2**64 - 1
MAX_STOP_STRINGS = 16


class GenerationRequestError(ValueError):
    """A client mistake in one generation request (Triton INVALID_ARG: HTTP 400, gRPC INVALID_ARGUMENT)."""


# ---------------------------------------------------------------------------------------------------
# Pure validation (no Triton, no torch): every rule names the input and what it must be.
# ---------------------------------------------------------------------------------------------------


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise GenerationRequestError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, (float, np.floating)) and (not math.isfinite(value) or value != int(value)):
        raise GenerationRequestError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise GenerationRequestError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise GenerationRequestError(f"{name} must be a finite number, got {value!r}")
    return number


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise GenerationRequestError(f"{name} must be true or false, got {value!r}")


def _as_strings(name: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise GenerationRequestError(f"{name} must be a string or a list of strings, got {value!r}")
    if any(not item for item in items):
        raise GenerationRequestError(f"{name} must not contain an empty string")
    if len(items) > MAX_STOP_STRINGS:
        raise GenerationRequestError(
            f"{name} holds {len(items)} strings; at most {MAX_STOP_STRINGS} are allowed"
        )
    return tuple(items)


def parse_sampling_json(text: str) -> dict[str, Any]:
    """The `sampling_parameters` input: a JSON object whose keys are all in SAMPLING_KEYS."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GenerationRequestError(f"sampling_parameters must be a JSON object: {exc}") from exc
    if not isinstance(parsed, dict):
        raise GenerationRequestError(
            f"sampling_parameters must be a JSON object, got {type(parsed).__name__}"
        )
    check_known_keys("sampling_parameters", parsed, SAMPLING_KEYS)
    return parsed


def check_known_keys(where: str, values: Mapping[str, Any], accepted: tuple[str, ...]) -> None:
    unknown = sorted(set(values) - set(accepted))
    if unknown:
        raise GenerationRequestError(
            f"{where} has unknown field(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}"
        )


# Numeric sampling settings: name -> (parser, whether a value is allowed, the rule an error states).
_NUMERIC_SETTINGS: dict[str, tuple[Callable[[str, Any], float], Callable[[float], bool], str]] = {
    "temperature": (_as_float, lambda value: value >= 0, "must be >= 0 (0 means greedy)"),
    "top_p": (_as_float, lambda value: 0 < value <= 1, "must be in (0, 1]"),
    "top_k": (_as_int, lambda value: value >= 0, "must be >= 0 (0 means no limit)"),
    "seed": (_as_int, lambda value: 0 <= value <= MAX_SEED, "must be between 0 and 2**64-1"),
    "repetition_penalty": (_as_float, lambda value: value > 0, "must be > 0 (1 means none)"),
    "frequency_penalty": (_as_float, lambda value: -2 <= value <= 2, "must be between -2 and 2"),
    "presence_penalty": (_as_float, lambda value: -2 <= value <= 2, "must be between -2 and 2"),
    "min_tokens": (_as_int, lambda value: value >= 0, "must be >= 0"),
    "top_logprobs": (
        _as_int,
        lambda value: 0 <= value <= decoding.MAX_TOP_LOGPROBS,
        f"must be between 0 and {decoding.MAX_TOP_LOGPROBS}",
    ),
}


def build_sampling(prompt: str, values: Mapping[str, Any], max_tokens_limit: int) -> Sampling:
    """Validate the merged parameters of one request (inputs over sampling_parameters over parameters)."""
    if not prompt.strip():
        raise GenerationRequestError("text_input must not be empty")
    settings: dict[str, Any] = {"prompt": prompt}
    if values.get("max_tokens") is not None:
        max_tokens = _as_int("max_tokens", values["max_tokens"])
        if max_tokens < 1:
            raise GenerationRequestError(f"max_tokens must be at least 1, got {max_tokens}")
        if max_tokens > max_tokens_limit:
            raise GenerationRequestError(
                f"max_tokens {max_tokens} exceeds this model's maximum of {max_tokens_limit} tokens"
            )
        settings["max_tokens"] = max_tokens
    for name, (parse, valid, rule) in _NUMERIC_SETTINGS.items():
        if values.get(name) is not None:
            value = parse(name, values[name])
            if not valid(value):
                raise GenerationRequestError(f"{name} {rule}, got {value}")
            settings[name] = value
    stops: list[str] = []
    for name in ("stop", "stop_words"):  # stop_words: what Triton's OpenAI frontend sends
        if values.get(name) is not None:
            stops += _as_strings(name, values[name])
    if stops:
        settings["stop"] = _as_strings("stop", list(dict.fromkeys(stops)))
    if values.get("stop_token_ids") is not None:
        ids = values["stop_token_ids"]
        if not isinstance(ids, (list, tuple)):
            raise GenerationRequestError(f"stop_token_ids must be a list of token ids, got {ids!r}")
        settings["stop_token_ids"] = tuple(_as_int("stop_token_ids", item) for item in ids)
        if any(token < 0 for token in settings["stop_token_ids"]):
            raise GenerationRequestError("stop_token_ids must not be negative")
    if values.get("truncate_prompt_tokens") is not None:
        keep = _as_int("truncate_prompt_tokens", values["truncate_prompt_tokens"])
        if keep < 1:
            raise GenerationRequestError(f"truncate_prompt_tokens must be at least 1, got {keep}")
        settings["truncate_prompt_tokens"] = keep
    for name in ("stream", "exclude_input_in_output", "logprobs"):
        if values.get(name) is not None:
            settings[name] = _as_bool(name, values[name])
    if settings.get("top_logprobs") and not settings.get("logprobs"):
        raise GenerationRequestError("top_logprobs needs logprobs true")
    ceiling = settings.get("max_tokens", max_tokens_limit)
    if settings.get("min_tokens", 0) > ceiling:
        raise GenerationRequestError(f"min_tokens {settings['min_tokens']} exceeds max_tokens {ceiling}")
    return Sampling(**settings)


def fit_prompt(
    prompt_ids: list[int], sampling: Sampling, context: int, default_max_tokens: int
) -> tuple[list[int], int]:
    """The prompt to run and how many tokens may follow it within the context.

    A prompt is never cut silently: a too-long one is refused naming both lengths unless the request set
    `truncate_prompt_tokens` (keep that many of its last tokens). `max_tokens` clamps to the room left;
    a prompt that leaves no room is refused.
    """
    if sampling.truncate_prompt_tokens is not None:
        prompt_ids = prompt_ids[-sampling.truncate_prompt_tokens :]
    if len(prompt_ids) >= context:
        raise GenerationRequestError(
            f"text_input is {len(prompt_ids)} tokens but this model's context is {context} tokens, which "
            "must also hold at least one generated token; shorten the prompt or set "
            "sampling_parameters.truncate_prompt_tokens"
        )
    room = context - len(prompt_ids)
    wanted = sampling.max_tokens if sampling.max_tokens is not None else default_max_tokens
    return prompt_ids, min(wanted, room)


def find_stop(text: str, stops: tuple[str, ...], start: int = 0) -> tuple[int, str] | None:
    """(index, stop string) of the earliest stop string in `text` from `start` on, or None."""
    hits = [(text.find(stop, start), stop) for stop in stops]
    found = [hit for hit in hits if hit[0] >= 0]
    return min(found) if found else None


def default_max_concurrent_sequences(
    device: str, kv_bytes_per_token: int, context: int, budget_bytes: int | None = None
) -> int:
    """Sequences a model serves at once by default: a device-typical batch, capped by a KV-cache budget.

    On a CPU decoding speed stops growing past a few dozen sequences while each one's full-context KV cache
    stays reserved; a GPU profits from far wider batches. The budget keeps the reserved cache modest.
    """
    typical, budget = (64, 8 << 30) if device == "gpu" else (16, 2 << 30)
    budget = budget if budget_bytes is None else budget_bytes
    fits = budget // max(1, kv_bytes_per_token * context)
    return int(max(1, min(typical, fits)))


def checkpoint_defaults(generation_config: Mapping[str, Any]) -> dict[str, Any]:
    """The request defaults a checkpoint's generation_config sets (only keys it sets explicitly). With
    `do_sample: false` its temperature/top-p/top-k are inert in `generate`, so only its repetition penalty
    applies; a request still chooses its own temperature."""
    defaults = {key: generation_config[key] for key in GENERATION_CONFIG_DEFAULTS if key in generation_config}
    if generation_config.get("do_sample") is False:
        defaults = {key: value for key, value in defaults.items() if key == "repetition_penalty"}
    return defaults


def _input_values(request: Any, name: str) -> Any | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)


def _scalar(request: Any, name: str) -> Any | None:
    values = _input_values(request, name)
    if values is None:
        return None
    if values.size != 1:
        raise GenerationRequestError(f"{name} must hold exactly one value, got {values.size}")
    return values[0].item() if hasattr(values[0], "item") else values[0]


def _utf8(name: str, item: Any) -> str:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GenerationRequestError(f"{name} must be UTF-8 text") from exc
    return str(item)


def parse_request(request: Any, max_tokens_limit: int, defaults: Mapping[str, Any]) -> Sampling:
    """Read and validate one Triton request (raises GenerationRequestError); `defaults` (the checkpoint's
    generation_config) fill what the request leaves out."""
    texts = _input_values(request, "text_input")
    if texts is None:
        raise GenerationRequestError("input text_input is required")
    if texts.size != 1:
        raise GenerationRequestError(f"text_input must hold exactly one prompt, got {texts.size}")
    prompt = _utf8("text_input", texts[0])

    values: dict[str, Any] = {}
    raw_parameters = request.parameters() if hasattr(request, "parameters") else "{}"
    parameters = json.loads(raw_parameters) if raw_parameters else {}
    check_known_keys("request parameters", parameters, REQUEST_PARAMETER_KEYS)
    values.update(parameters)
    sampling_json = _input_values(request, "sampling_parameters")
    if sampling_json is not None:
        if sampling_json.size != 1:
            raise GenerationRequestError("sampling_parameters must hold exactly one JSON string")
        values.update(parse_sampling_json(_utf8("sampling_parameters", sampling_json[0])))
    for name in ("max_tokens", "temperature", "top_p", "seed", "stream", "exclude_input_in_output"):
        value = _scalar(request, name)
        if value is not None:
            values[name] = value
    for name in ("stop", "stop_words"):
        stops = _input_values(request, name)
        if stops is not None:
            values[name] = [_utf8(name, item) for item in stops]
    return build_sampling(prompt, {**defaults, **values}, max_tokens_limit)
