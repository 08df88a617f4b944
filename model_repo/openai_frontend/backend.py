"""Triton over gRPC (asyncio): the model's I/O contract, errors mapped to OpenAI's shape.

The generated stubs of `tritonclient.grpc` are used directly on one `grpc.aio` channel: the aio client's
`stream_infer` cannot ask for Triton's empty final response (a reserved parameter), which is how a
decoupled model says it is done, and one channel multiplexes every concurrent request over HTTP/2.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc
from tritonclient.utils import serialize_byte_tensor

from .protocol import OpenAIError

_LEADING_CODE = re.compile(r"\[([A-Z_]+)\] ")
# Triton prefixes unary errors with the request id, which this frontend never sets.
_REQUEST_ID = re.compile(r"^\[request id: [^\]]*\] ")
# Larger than any embedding batch or generated text this frontend asks for.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Piece:
    """One response of the generation stream: new text and the runtime's token counts so far (None where
    the backend does not report them, e.g. Triton's vLLM backend); on the final response the runtime's
    finish reason (`stop`, `length`) and the stop that matched; per-token log-probabilities if asked for."""

    text: str
    input_tokens: int | None
    output_tokens: int | None
    finish_reason: str | None = None
    stop_reason: str | None = None
    logprobs: tuple[dict[str, Any], ...] = ()


def _string_output(result: Any, name: str) -> str | None:
    values = result.as_numpy(name)
    if values is None or not values.size:
        return None
    item = values.reshape(-1)[0]
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


def _status_for(code_name: str) -> tuple[int, str]:
    if code_name in ("INVALID_ARG", "INVALID_ARGUMENT"):
        return 400, "invalid_request_error"
    if code_name == "UNAVAILABLE":
        return 503, "server_error"
    return 500, "server_error"


def triton_error(message: str, grpc_code: grpc.StatusCode | None = None) -> OpenAIError:
    """The runtime leads its messages with the Triton code (`[INVALID_ARG] ...`) because gRPC streaming
    responses carry no status; unary calls carry it as the gRPC status."""
    code_name = grpc_code.name if grpc_code is not None else "INTERNAL"
    message = _REQUEST_ID.sub("", message, count=1)
    leading = _LEADING_CODE.match(message)
    if leading:
        code_name, message = leading.group(1), message[leading.end() :]
    status, error_type = _status_for(code_name)
    return OpenAIError(status, message, error_type=error_type, code=code_name.lower())


def _add_input(request: Any, name: str, array: np.ndarray[Any, Any], datatype: str) -> None:
    tensor = request.inputs.add()
    tensor.name = name
    tensor.datatype = datatype
    tensor.shape.extend(array.shape)
    raw = serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes()
    request.raw_input_contents.append(raw)


class TritonBackend:
    """The Triton server on `url` (host:port of its gRPC endpoint)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._channel: Any = None
        self._stub_instance: Any = None
        self._configs: dict[str, Any] = {}

    @property
    def _stub(self) -> Any:
        # Created on first use: a grpc.aio channel belongs to the event loop it was made in (uvicorn's).
        if self._stub_instance is None:
            self._channel = grpc.aio.insecure_channel(
                self.url,
                options=[
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ],
            )
            self._stub_instance = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub_instance

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def ready(self, model: str) -> bool:
        """Triton's own readiness (server and model), what the sidecar's readiness probe reports."""
        try:
            server = await self._stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=2)
            if not server.ready:
                return False
            loaded = await self._stub.ModelReady(service_pb2.ModelReadyRequest(name=model), timeout=2)
            return bool(loaded.ready)
        except grpc.aio.AioRpcError:
            return False

    async def config(self, model: str) -> Any:
        if model not in self._configs:
            try:
                response = await self._stub.ModelConfig(
                    service_pb2.ModelConfigRequest(name=model), timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                raise OpenAIError(
                    503, f"the model is not ready: {exc.details()}", error_type="server_error"
                ) from exc
            self._configs[model] = response.config
        return self._configs[model]

    async def _int_parameter(self, model: str, name: str) -> int | None:
        """An integer the builder wrote into the model's config parameters; None where it has none."""
        parameters = (await self.config(model)).parameters
        if name not in parameters:
            return None
        return int(parameters[name].string_value)

    async def default_max_tokens(self, model: str) -> int | None:
        """The generation runtime's `max_tokens` for a request that sets none, as the builder wrote it
        into the model's config; None where the config has no such parameter."""
        return await self._int_parameter(model, "default_max_tokens")

    async def max_tokens_limit(self, model: str) -> int | None:
        """The most tokens the runtime generates for one request (spec.triton.maxTokens, else the context
        less one), as the builder wrote it into the model's config; None where the config has none."""
        return await self._int_parameter(model, "max_tokens_limit")

    async def max_concurrent_sequences(self, model: str) -> int | None:
        """The sequences the runtime decodes together (spec.triton.maxConcurrentSequences), as the builder
        wrote it into the model's config; None where the config has none (Triton's vLLM backend)."""
        return await self._int_parameter(model, "max_concurrent_sequences")

    async def infer_texts(
        self, model: str, inputs: dict[str, list[str]], outputs: list[str]
    ) -> dict[str, np.ndarray[Any, Any]]:
        """One batched request whose inputs are texts, one per batch item (the caller keeps within
        max_batch_size); returns the named outputs."""
        request = service_pb2.ModelInferRequest(model_name=model)
        for name, texts in inputs.items():
            array = np.array([[text.encode("utf-8")] for text in texts], dtype=np.object_)
            _add_input(request, name, array, "BYTES")
        for name in outputs:
            request.outputs.add().name = name
        try:
            response = await self._stub.ModelInfer(request)
        except grpc.aio.AioRpcError as exc:
            raise triton_error(exc.details() or str(exc), exc.code()) from exc
        result = InferResult(response)
        return {name: result.as_numpy(name) for name in outputs}

    async def generate(
        self, model: str, prompt: str, stream: bool, sampling: dict[str, Any]
    ) -> AsyncGenerator[Piece, None]:
        """The runtime's responses for one prompt, until its final one.

        The sampling keys go in `sampling_parameters` (JSON), which both the Python runtime and Triton's
        vLLM backend read. Leaving the iteration early (the HTTP client went away) cancels the gRPC call,
        which Triton turns into a cancelled request: the runtime drops the sequence within ~20 ms.
        """
        request = service_pb2.ModelInferRequest(model_name=model)
        _add_input(request, "text_input", np.array([prompt.encode("utf-8")], dtype=np.object_), "BYTES")
        _add_input(request, "stream", np.array([stream], dtype=np.bool_), "BOOL")
        _add_input(request, "exclude_input_in_output", np.array([True], dtype=np.bool_), "BOOL")
        parameters = json.dumps(sampling).encode("utf-8")
        _add_input(request, "sampling_parameters", np.array([parameters], dtype=np.object_), "BYTES")
        request.parameters["triton_enable_empty_final_response"].bool_param = True

        async def requests() -> AsyncIterator[Any]:
            yield request

        call = self._stub.ModelStreamInfer(requests())
        try:
            async for response in call:
                if response.error_message:
                    raise triton_error(response.error_message)
                result = InferResult(response.infer_response)
                text = _string_output(result, "text_output")
                if text is not None:
                    counts = [result.as_numpy(name) for name in ("num_input_tokens", "num_output_tokens")]
                    logprobs = _string_output(result, "logprobs")
                    yield Piece(
                        text,
                        None if counts[0] is None else int(counts[0].reshape(-1)[0]),
                        None if counts[1] is None else int(counts[1].reshape(-1)[0]),
                        _string_output(result, "finish_reason"),
                        _string_output(result, "stop_reason"),
                        tuple(json.loads(logprobs)) if logprobs else (),
                    )
                if response.infer_response.parameters["triton_final_response"].bool_param:
                    return
        except grpc.aio.AioRpcError as exc:
            raise triton_error(exc.details() or str(exc), exc.code()) from exc
        finally:
            # A no-op once the final response arrived; otherwise this is the cancellation.
            call.cancel()
