"""The `host` role: one Python model that runs every packed encoder of a server (see forwarder.py).

Each packed model is loaded from its own built directory and through its own runtime files (the package
model.py makes of that directory), exactly as its own stub would load it; the host only holds the
instances and routes each request to the model its forwarder names. A batch from Triton's dynamic
batcher may mix models: it is split by model and each part goes to that model's role as one batch.

The models of one batch encode side by side on worker threads; everything that touches Triton's objects
(reading requests, making responses) stays on the stub's own thread. A model loads on the stub's thread
too, inside `execute`: while it loads (warm-up and the batch planner's calibration included) the other
packed models' requests wait. An earlier version loaded on a worker thread in a decoupled host whose
batch threads answered through response senders; tritonserver crashed (SIGSEGV) in one of three runs
of the packing tests, so the host is kept simple.

A model is released when the forwarder process that loaded it has exited: Triton stops a model's stub
when the model is unloaded, and a Python model may not call BLS from `finalize` to say so itself.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .forwarder import LOAD_PARAMETER, MODEL_PARAMETER, UNKNOWN_MODEL, coded_message, process_start_time

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by tests of the pure parts
    pb_utils = None

RELEASE_CHECK_S = 2.0
ENCODE_THREADS = 4


def owner_alive(key: str) -> bool:
    """Whether the forwarder process named in `key` (forwarder.instance_key) still runs."""
    pid, started = json.loads(key)[:2]
    return bool(started) and process_start_time(int(pid)) == started


class HostedModels:
    """Key -> the model's role object, with its release when the owner process is gone."""

    def __init__(self, owner_alive: Callable[[str], bool] = owner_alive) -> None:
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._owner_alive = owner_alive

    def get(self, key: str) -> Any:
        with self._lock:
            return self._models.get(key)

    def add(self, key: str, role: Any) -> None:
        with self._lock:
            self._models[key] = role

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def release_orphans(self) -> list[str]:
        """Drop the models whose forwarder has exited; their keys."""
        released = [key for key in self.keys() if not self._owner_alive(key)]
        with self._lock:
            orphans = [self._models.pop(key) for key in released if key in self._models]
        for role in orphans:
            role.finalize()
        return released


def split_by_model(keys: list[str | None]) -> dict[str | None, list[int]]:
    """Request positions grouped by model key, in arrival order."""
    groups: dict[str | None, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(key, []).append(position)
    return groups


class SharedHost:
    """Triton's entry point calls `execute` with a batch of BLS requests from the forwarders."""

    def __init__(self, args: dict[str, str], package_of: Callable[[str], str]) -> None:
        self.args = args
        self.package_of = package_of
        self.models = HostedModels()
        # The models of one batch encode side by side (torch and the tokenizers release the GIL); only
        # `encode` runs there: Triton's objects are read and made on the stub's own thread.
        self.workers = ThreadPoolExecutor(max_workers=ENCODE_THREADS, thread_name_prefix="modeldeploy-host")
        self.stopped = threading.Event()
        threading.Thread(target=self._release_loop, name="modeldeploy-host-release", daemon=True).start()

    def execute(self, requests: list[Any]) -> list[Any]:
        parameters = [json.loads(request.parameters() or "{}") for request in requests]
        responses: list[Any] = [None] * len(requests)
        keys: list[str | None] = []
        for position, params in enumerate(parameters):
            key = params.get(MODEL_PARAMETER)
            if LOAD_PARAMETER in params:
                responses[position] = self._load(str(key), params[LOAD_PARAMETER])
                keys.append("")  # answered by its load
            else:
                keys.append(key)
        running = []
        for key, positions in split_by_model(keys).items():
            if key == "":
                continue
            role = self.models.get(key) if key is not None else None
            if role is None:
                for position in positions:
                    responses[position] = _error(f"{UNKNOWN_MODEL} {key!r}")
                continue
            batch = role.decode([requests[p] for p in positions])
            if batch.texts:
                encoding = self.workers.submit(role.encode, batch.texts, batch.pairs)
                running.append((positions, role, batch, encoding))
            else:
                _place(responses, positions, batch.responses)
        for positions, role, batch, encoding in running:
            try:
                outputs, failures = encoding.result()
                answers = role.respond(batch, outputs, failures)
            except Exception as exc:  # one bad batch must not take the others down
                batch.fail_unanswered(f"inference failed: {exc}")
                answers = batch.responses
            _place(responses, positions, answers)
        return [_coded(response) for response in responses]

    def _load(self, key: str, load_arguments: str) -> Any:
        """Load the model once per key (further requests to load it are answered at once)."""
        if self.models.get(key) is None:
            try:
                self.models.add(key, self._build_role(load_arguments))
            except Exception as exc:  # the model's own load error, for its forwarder to report
                return _error(f"modeldeploy-host: loading the model failed: {exc}")
            self._log(f"loaded {_describe(key)}")
        return pb_utils.InferenceResponse(output_tensors=[])

    def _build_role(self, load_arguments: str) -> Any:
        import importlib

        model_args = json.loads(load_arguments)
        # Where the model runs is the host's to say: its instance's kind and device.
        for name in ("model_instance_kind", "model_instance_device_id"):
            if name in self.args:
                model_args[name] = self.args[name]
        version_dir = f"{model_args['model_repository']}/{model_args['model_version']}"
        package = self.package_of(version_dir)
        settings = importlib.import_module(f"{package}.serving").Settings(model_args)
        return importlib.import_module(f"{package}.encoder").EncoderRole(settings)

    def _release_loop(self) -> None:
        while not self.stopped.wait(RELEASE_CHECK_S):
            for key in self.models.release_orphans():
                self._log(f"released {_describe(key)}: its forwarder has exited")

    def _log(self, message: str) -> None:
        if pb_utils is not None:
            pb_utils.Logger.log_info(f"modeldeploy_host: {message}")

    def finalize(self) -> None:
        self.stopped.set()
        self.workers.shutdown(wait=True)


def _describe(key: str) -> str:
    pid, _, name, version_dir = json.loads(key)
    return f"model {name} ({version_dir}, forwarder pid {pid})"


def _place(responses: list[Any], positions: list[int], answers: list[Any]) -> None:
    for position, answer in zip(positions, answers, strict=True):
        responses[position] = answer


def _coded(response: Any) -> Any:
    """An error's code written into its message (a BLS answer reaches the forwarder as INTERNAL)."""
    if not response.has_error():
        return response
    error = pb_utils.TritonError(coded_message(response.error()))
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def _error(message: str) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
    )
