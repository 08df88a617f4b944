"""The OpenAI request bodies this frontend accepts, and its error shape.

Requests are pydantic models (FastAPI validates them; a violation is a 400 in OpenAI's error shape).
Unknown fields are ignored, as OpenAI-compatible servers commonly do, because SDKs add new optional fields
faster than servers learn them; fields that would change the result and are not supported (best_of
other than n, logit_bias, tools, ...) are refused by `refuse_unsupported` with a message naming them.
The controls OpenAI lacks (`repetition_penalty`, `top_k`, `min_tokens`) are taken as extra body fields,
as vLLM's server takes them.

Responses are written as plain JSON objects in OpenAI's shapes: the runtime image does not carry the
`openai` SDK, and the tests parse every response with the real SDK's types.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

# OpenAI's own bound on `n`; a deployment bounds it further by the sequences it decodes together.
MAX_CHOICES = 128


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class GenerationRequest(_Request):
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, le=2**64 - 1)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    # Not OpenAI's: vLLM's extra body fields.
    repetition_penalty: float | None = Field(default=None, gt=0)
    top_k: int | None = Field(default=None, ge=0)
    min_tokens: int | None = Field(default=None, ge=0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    # Unset: the answer may run to the end of the context, bounded by the deployment's maxTokens.
    max_tokens: int | None = Field(default=None, ge=1)
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = None
    suffix: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    # Extra keys (name, tool_call_id, ...) reach the chat template as the checkpoint may use them.
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None


class EmbeddingRequest(_Request):
    # Strict: a list mixing strings and token ids is refused, not coerced.
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


def refuse_unsupported(request: GenerationRequest) -> None:
    """400 for every field whose value would change the result in a way this server cannot honour."""
    if request.logit_bias:
        raise invalid("logit_bias is not supported", "logit_bias")
    if isinstance(request, CompletionRequest):
        choices = request.n or 1
        if request.best_of not in (None, choices):
            # best_of > n would rank candidates by log-probability; the n choices come back unranked.
            raise invalid(f"best_of must equal n ({choices}), got {request.best_of}", "best_of")
        if request.suffix:
            raise invalid("suffix is not supported", "suffix")
    if isinstance(request, ChatCompletionRequest):
        if request.top_logprobs and not request.logprobs:
            raise invalid("top_logprobs needs logprobs true", "top_logprobs")
        if request.tools:
            raise invalid("tools are not supported", "tools")
        if request.response_format and request.response_format.get("type") not in (None, "text"):
            raise invalid("response_format must be text", "response_format")
