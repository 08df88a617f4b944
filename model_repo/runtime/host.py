"""The `host` role: one Python model that runs every packed encoder of a server (see forwarder.py).

Each packed model is loaded from its own built directory and through its own runtime files (the package
model.py makes of that directory), exactly as its own stub would load it; the host only holds the
instances and routes each request to the model its forwarder names. A batch from Triton's dynamic
batcher may mix models: it is split by model and each part goes to that model's role as one batch.

Loads run on a worker thread while `execute` goes on serving the other models (the stub runs an async
`execute` on its event loop), so placing or replacing a model does not stall its neighbours.

A model is released when the forwarder process that loaded it has exited: Triton stops a model's stub
when the model is unloaded, and a Python model may not call BLS from `finalize` to say so itself.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from .forwarder import LOAD_PARAMETER, MODEL_PARAMETER, UNKNOWN_MODEL, coded_message, process_start_time

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by tests of the pure parts
    pb_utils = None

RELEASE_CHECK_S = 2.0


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
        self.loading: dict[str, asyncio.Future[Any]] = {}
        self.stopped = threading.Event()
        threading.Thread(target=self._release_loop, name="modeldeploy-host-release", daemon=True).start()

    async def execute(self, requests: list[Any]) -> list[Any]:
        parameters = [json.loads(request.parameters() or "{}") for request in requests]
        responses: list[Any] = [None] * len(requests)
        keys: list[str | None] = [p.get(MODEL_PARAMETER) for p in parameters]
        for position, params in enumerate(parameters):
            if LOAD_PARAMETER in params:
                responses[position] = await self._load(str(params[MODEL_PARAMETER]), params[LOAD_PARAMETER])
        for key, positions in split_by_model(keys).items():
            positions = [p for p in positions if responses[p] is None]
            if not positions:
                continue
            role = self.models.get(key) if key is not None else None
            if role is None:
                for p in positions:
                    responses[p] = _error(f"{UNKNOWN_MODEL} {key!r}")
                continue
            answers = role.execute([requests[p] for p in positions])
            for p, answer in zip(positions, answers, strict=True):
                responses[p] = answer
        return [_with_coded_error(response) for response in responses]

    async def _load(self, key: str, load_arguments: str) -> Any:
        """Load the model once per key, on a worker thread; concurrent loads of one key share it."""
        if self.models.get(key) is not None:
            return pb_utils.InferenceResponse(output_tensors=[])
        pending = self.loading.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().run_in_executor(None, self._build_role, load_arguments)
            self.loading[key] = pending
        try:
            role = await pending
        except Exception as exc:  # the model's own load error, for its forwarder to report
            return _error(f"modeldeploy-host: loading the model failed: {exc}")
        finally:
            self.loading.pop(key, None)
        if self.models.get(key) is None:
            self.models.add(key, role)
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
            pb_utils.Logger.log_info(f"{time.strftime('%H:%M:%S')} modeldeploy_host: {message}")

    def finalize(self) -> None:
        self.stopped.set()


def _describe(key: str) -> str:
    pid, _, name, version_dir = json.loads(key)
    return f"model {name} ({version_dir}, forwarder pid {pid})"


def _with_coded_error(response: Any) -> Any:
    if not response.has_error():
        return response
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(coded_message(response.error()))
    )


def _error(message: str) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
    )
