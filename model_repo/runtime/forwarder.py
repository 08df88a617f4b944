"""The `forward` role: a packed encoder whose model runs in the server's shared host (host.py).

Triton's Python backend starts one stub process per model instance. A stub that imports torch and
transformers holds ~450 MiB of its own before any weights, so packing N encoders as N full stubs costs N
times that. With a shared runtime, `model_repo.model_set` serves each shareable encoder under its own
name (its own config, inputs, outputs, dynamic batching, warm-up, state in Triton's index) through this
role instead: the stub imports neither torch nor transformers, and passes every request to the host model
by BLS. The host loads the model's checkpoint from the model's own directory with the model's own runtime
files, once, and runs every packed model in one process (one CUDA context on a GPU).

Protocol (request parameters, JSON strings):
- an inference request carries `modeldeploy_model` (this instance's key) and the texts of a whole batch;
- the forwarder loads its model in the host while Triton loads the forwarder (`initialize`): it sends
  `modeldeploy_load` (its Triton arguments, the repository resolved) to the host through the server's
  HTTP endpoint (the `server` parameter model_set writes into the forwarder's config), since a Python
  model may call BLS only from `execute`. A model that fails to load there fails the forwarder's
  `initialize`, with the host's reason. It must not fail at warm-up instead: tritonserver 2.51 (the one
  nvidia-pytriton bundles) crashes with SIGSEGV in about one load in three whose warm-up fails
  (docs/packing.md), taking every packed model down with it.
- the host answers a key it does not hold with an error whose message starts with UNKNOWN_MODEL (it was
  restarted since, or the forwarder had no `server` to load through); the forwarder then sends
  `modeldeploy_load` by BLS and retries.
- the host drops a key whose forwarder process has exited (see host.py): unloading the forwarder in
  Triton frees its model in the host without a message (`finalize` may not call BLS).

Like model.py this module imports only the standard library and what Triton's stub provides.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by tests of the pure parts
    pb_utils = None

HOST_MODEL = "modeldeploy_host"
MODEL_PARAMETER = "modeldeploy_model"
LOAD_PARAMETER = "modeldeploy_load"
UNKNOWN_MODEL = "modeldeploy-host: unknown model"
CODE_PREFIX = "modeldeploy-code="
SERVER_PARAMETER = "server"  # the forwarder's config parameter: tritonserver's HTTP address (host:port)
LOAD_TIMEOUT_S = 600.0  # the host's load includes the model's warm-up and the batch planner's calibration
# The text inputs an encoder may take (model_repo.configs.encoder_inputs); the host declares them all.
TEXT_INPUTS = ("TEXT", "TEXT_PAIR", "QUERY")


def process_start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with the pid, it
    names one process even after the pid is reused. Empty when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return ""
    # The command name (field 2) is in parentheses and may contain spaces: count fields after it.
    return text.rsplit(")", 1)[1].split()[19]


def instance_key(pid: int, model_name: str, version_dir: str) -> str:
    """The host's key for one forwarder instance: its process (pid and start time), its model, and the
    built version directory it serves, so that two versions of a model during a replacement stay apart."""
    return json.dumps([pid, process_start_time(pid), model_name, version_dir])


def host_arguments(args: dict[str, str]) -> dict[str, str]:
    """The Triton arguments the host loads this model with: the forwarder's own, with the repository
    resolved to the built directory (the served name is a symlink the model set swaps on a change)."""
    version_dir = os.path.realpath(os.path.join(args["model_repository"], args["model_version"]))
    return {
        **args,
        "model_repository": os.path.dirname(version_dir),
        "model_version": os.path.basename(version_dir),
    }


class ForwarderRole:
    """A batch of requests goes to the host as one BLS request: the texts of every request sending the
    same inputs, concatenated; each request's response is its rows of the answer (every encoder output
    is row-aligned with the texts). One bad text would fail the whole merged request, so a merged request
    refused as the client's mistake is retried request by request, and only the request at fault gets the
    error.

    The host is asked synchronously, on the stub's own thread. An `async` execute runs on the stub's
    event-loop thread and `async_exec` waits on an executor thread: more thread hand-overs per batch for
    nothing, since the host answers one request at a time. Measured (bench/README.md, packing, session 8):
    one text per request at one client 5.8-6.2 ms against 6.2-6.25 ms; the forwarder's CPU 0.04 cores
    against 0.056 at 64 clients; throughput unchanged within the noise."""

    def __init__(self, args: dict[str, str]) -> None:
        self.args = host_arguments(args)
        model_config = json.loads(args["model_config"])
        self.outputs = [str(output["name"]) for output in model_config.get("output", [])]
        version_dir = os.path.join(self.args["model_repository"], self.args["model_version"])
        self.key = instance_key(os.getpid(), str(model_config.get("name", "")), version_dir)
        server = model_config.get("parameters", {}).get(SERVER_PARAMETER, {}).get("string_value", "")
        if server:
            self._load_through_server(str(server))

    def _load_through_server(self, server: str) -> None:
        """Have the host load this model now, through the server's HTTP endpoint; raise with the host's
        reason if it cannot. An unreachable endpoint leaves the load to the first request (the warm-up)."""
        body = {
            "inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["load"]}],
            "parameters": {MODEL_PARAMETER: self.key, LOAD_PARAMETER: json.dumps(self.args)},
        }
        base = server if server.startswith("http") else f"http://{server}"
        request = urllib.request.Request(
            f"{base}/v2/models/{HOST_MODEL}/infer", data=json.dumps(body).encode(), method="POST"
        )
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=LOAD_TIMEOUT_S) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise ModelLoadFailed(_error_text(exc.read().decode(errors="replace"))) from None
        except (urllib.error.URLError, OSError) as exc:
            if pb_utils is not None:
                pb_utils.Logger.log_warn(
                    f"{HOST_MODEL} not reachable at {server} ({exc}): the model loads at its first request"
                )

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = [_text_inputs(request) for request in requests]
        groups: dict[tuple[str, ...], list[int]] = {}
        for position, arrays in enumerate(inputs):
            groups.setdefault(tuple(arrays), []).append(position)
        responses: list[Any] = [None] * len(requests)
        for positions in groups.values():
            answered = self._forward([inputs[p] for p in positions])
            for position, response in zip(positions, answered, strict=True):
                responses[position] = response
        return responses

    def _forward(self, requests: list[dict[str, Any]]) -> list[Any]:
        """Responses for requests that send the same inputs (name -> array), in one host request."""
        import numpy as np

        merged = {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}
        answer = self._answer(merged)
        if answer.has_error():
            # Only a client's mistake can be one request's alone; a load or inference failure is the
            # model's, and retrying each request would repeat it (a failed load once per request).
            if len(requests) > 1 and split_coded_message(answer.error().message())[0] != "INTERNAL":
                return [self._forward([request])[0] for request in requests]
            return [pb_utils.InferenceResponse(output_tensors=[], error=restored_error(answer.error()))]
        outputs = {tensor.name(): tensor.as_numpy() for tensor in answer.output_tensors()}
        responses, first = [], 0
        for request in requests:
            rows = slice(first, first + len(request["TEXT"]))
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, array[rows]) for name, array in outputs.items()]
                )
            )
            first = rows.stop
        return responses

    def _answer(self, arrays: dict[str, Any]) -> Any:
        """The host's answer to `arrays`, loading the model there first if it does not hold it (the host
        may also have been restarted since this instance's last load)."""
        inputs = [pb_utils.Tensor(name, array) for name, array in arrays.items()]
        answer = self._ask_host(inputs)
        if answer.has_error() and UNKNOWN_MODEL in answer.error().message():
            placeholder = pb_utils.Tensor("TEXT", _text_array(["load"]))
            loaded = self._ask_host([placeholder], load=True)
            if loaded.has_error():
                return pb_utils.InferenceResponse(output_tensors=[], error=restored_error(loaded.error()))
            answer = self._ask_host(inputs)
        return answer

    def _ask_host(self, inputs: list[Any], load: bool = False) -> Any:
        parameters = {MODEL_PARAMETER: self.key}
        if load:
            parameters[LOAD_PARAMETER] = json.dumps(self.args)
        request = pb_utils.InferenceRequest(
            model_name=HOST_MODEL,
            inputs=inputs,
            requested_output_names=[] if load else self.outputs,
            parameters=parameters,
        )
        return request.exec()

    def finalize(self) -> None:
        """Nothing to send: the host notices that this process has exited."""


class ModelLoadFailed(RuntimeError):
    """The host could not load this forwarder's model (the message is the host's reason)."""


def _error_text(body: str) -> str:
    """The host's reason from a Triton HTTP error body ({"error": "..."}), its code prefix removed."""
    try:
        message = str(json.loads(body).get("error", body))
    except (json.JSONDecodeError, AttributeError):
        message = body
    return split_coded_message(message)[1]


def coded_message(error: Any) -> str:
    """The host's error message with its code in front: a BLS response's error reaches the caller as
    INTERNAL whatever its code, and a client's mistake (INVALID_ARG, HTTP 400) must stay the client's."""
    return f"{CODE_PREFIX}{str(error.code()).rsplit('.', 1)[-1]}:{error.message()}"


def split_coded_message(message: str) -> tuple[str, str]:
    """(code name, message) of a `coded_message`; ("INTERNAL", message) for any other message."""
    if message.startswith(CODE_PREFIX):
        code, _, text = message[len(CODE_PREFIX) :].partition(":")
        return code, text
    return "INTERNAL", message


def restored_error(error: Any) -> Any:
    code, message = split_coded_message(error.message())
    return pb_utils.TritonError(message, getattr(pb_utils.TritonError, code, pb_utils.TritonError.INTERNAL))


def _text_inputs(request: Any) -> dict[str, Any]:
    """The request's text inputs that it sends (name -> array), in TEXT_INPUTS order."""
    found = {name: pb_utils.get_input_tensor_by_name(request, name) for name in TEXT_INPUTS}
    return {name: tensor.as_numpy() for name, tensor in found.items() if tensor is not None}


def _text_array(texts: list[str]) -> Any:
    import numpy as np

    return np.array([[text.encode()] for text in texts], dtype=np.object_)
