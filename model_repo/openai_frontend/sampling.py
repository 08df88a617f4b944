"""What the generation routes send the runtime, and the runtime's per-token answers in OpenAI's shapes.

The request side maps OpenAI's fields (and vLLM's extra ones) onto the runtime's `sampling_parameters`;
the answer side turns the runtime's `logprobs` output (per token: id, text, log-probability, the top
alternatives) into the legacy completions shape and the chat shape.
"""

from __future__ import annotations

from typing import Any

from .protocol import ChatCompletionRequest, CompletionRequest, GenerationRequest

# Sent as they are when set: the runtime validates them and names a bad value.
PASSED_THROUGH = (
    "temperature",
    "top_p",
    "seed",
    "top_k",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
    "min_tokens",
)


def runtime_sampling(body: GenerationRequest, max_tokens: int | None) -> dict[str, Any]:
    """The runtime's `sampling_parameters` for one request."""
    values: dict[str, Any] = {}
    if max_tokens is not None:
        values["max_tokens"] = max_tokens
    for name in PASSED_THROUGH:
        value = getattr(body, name)
        if value is not None:
            values[name] = value
    stops = body.stop_strings()
    if stops:
        values["stop"] = stops
    if isinstance(body, CompletionRequest) and body.logprobs is not None:
        values["logprobs"] = True
        values["top_logprobs"] = body.logprobs
    if isinstance(body, ChatCompletionRequest) and body.logprobs:
        values["logprobs"] = True
        values["top_logprobs"] = body.top_logprobs or 0
    return values


def completion_logprobs(tokens: list[dict[str, Any]], text_offset: int) -> dict[str, Any]:
    """The legacy completions `logprobs` object; offsets count from `text_offset` (the echo's length)."""
    offsets = []
    for item in tokens:
        offsets.append(text_offset)
        text_offset += len(item["token"])
    return {
        "tokens": [item["token"] for item in tokens],
        "token_logprobs": [item["logprob"] for item in tokens],
        "top_logprobs": [{top["token"]: top["logprob"] for top in item["top_logprobs"]} for item in tokens],
        "text_offset": offsets,
    }


def _chat_token(item: dict[str, Any]) -> dict[str, Any]:
    return {"token": item["token"], "logprob": item["logprob"], "bytes": list(item["token"].encode("utf-8"))}


def chat_logprobs(tokens: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat `logprobs` object: one entry per token with its top alternatives."""
    return {
        "content": [
            {**_chat_token(item), "top_logprobs": [_chat_token(top) for top in item["top_logprobs"]]}
            for item in tokens
        ],
        "refusal": None,
    }
