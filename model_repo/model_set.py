"""Many built repositories served by one tritonserver in explicit model-control mode.

Triton reads its models from one directory (`served`). Each built repository stays where it was built,
read-only; `served` holds one symlink per Triton model, pointing into it. Reconciling a desired set
(model name → built repository) swaps the symlinks and drives Triton's repository API:

- a new model: link, then load;
- a changed model (another repository): relink atomically, then load again — Triton keeps serving the
  loaded version until the new one is ready, and keeps it if the new one fails to load;
- a removed model: unload, then unlink.

With a **shared runtime** (`SharedRuntime`), every shareable encoder (a Python model of the `encoder`
role built with the forwarder beside it) is served through one host model (`modeldeploy_host`): its
Triton model is a generated directory (outside `served`: Triton would list it as a model) with its own
config rewritten to the `forward` role on one CPU instance, next to links to its built version and
warm-up directories. The forwarder's stub imports neither torch nor transformers; the host loads every
packed model in one process (runtime/forwarder.py and runtime/host.py say how). Generators, ONNX models
and repositories built before the forwarder existed keep their own stubs.

`modeldeploy serve --source … --source …` and the server pods' agent container (`agent_main`) both run
this; the agent needs no Kubernetes credentials: it reads the desired set from a mounted ConfigMap and
talks only to the Triton in its own pod.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The builder's record in every repository (model_repo.build.RECORD_FILE; a test checks they agree). This
# module is standard library only: the agent runs it in the Triton image, where the project is not
# installed (the Dockerfile copies this one file there, as it does the OpenAI frontend).
RECORD_FILE = "modeldeploy.json"
# The ConfigMap key the operator writes and the agent reads: {"models": {name: {"repository": path}}}.
DESIRED_FILE = "models.json"
REQUEST_TIMEOUT_S = 600.0  # a load blocks until the model is ready or failed (warm-up included)
# The shared runtime: the host model's name (model_repo.runtime.forwarder.HOST_MODEL; a test checks they
# agree), where the generated model directories live, and the files the host runs (copied from a packed
# repository: this module ships alone in the agent's image).
SHARED_HOST = "modeldeploy_host"
# The forwarder's config parameter naming the server's HTTP address (runtime/forwarder.py SERVER_PARAMETER;
# a test checks they agree).
SERVER_PARAMETER = "server"
HOST_RUNTIME_FILES = ("model.py", "host.py", "forwarder.py")
ENCODER_ROLE_LINE = 'parameters { key: "role" value { string_value: "encoder" } }'
FORWARD_ROLE_LINE = 'parameters { key: "role" value { string_value: "forward" } }'
INSTANCE_GROUP = re.compile(r"^instance_group \[.*\]$", re.MULTILINE)
# Every packed encoder's inputs and outputs (model_repo.configs.encoder_inputs / task_outputs): the host
# declares them all; each forwarder asks for its own outputs only.
HOST_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 1024
input [
  {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "TEXT_PAIR" data_type: TYPE_STRING dims: [ 1 ] optional: true }},
  {{ name: "QUERY" data_type: TYPE_STRING dims: [ 1 ] optional: true }}
]
output [
  {{ name: "LABEL" data_type: TYPE_STRING dims: [ -1 ] }},
  {{ name: "SCORE" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "SCORES" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "EMBEDDING" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "ENTITIES" data_type: TYPE_STRING dims: [ -1 ] }},
  {{ name: "TOKENS" data_type: TYPE_STRING dims: [ -1 ] }}
]
instance_group [ {{ kind: {kind} count: 1 }} ]
dynamic_batching {{ max_queue_delay_microseconds: 0 }}
parameters {{ key: "role" value {{ string_value: "host" }} }}
"""


class ModelSetError(RuntimeError):
    """A desired set that cannot be served as written (an unbuilt repository, a name clash)."""


@dataclass(frozen=True)
class TritonModel:
    """One Triton model directory of a built repository (a python model has one; onnx has several)."""

    name: str
    directory: Path


@dataclass(frozen=True)
class SharedRuntime:
    """Serve the shareable encoders through one host model on `host_kind` (KIND_CPU, KIND_GPU), from
    model directories generated in `directory` (both Triton and the reconciler must see it at this
    path)."""

    directory: Path
    host_kind: str = "KIND_CPU"


@dataclass
class ReconcileReport:
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # model → Triton's error
    links: dict[str, Path] = field(default_factory=dict)  # Triton model → the directory it was linked to


def read_record(repository: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((repository / RECORD_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def triton_models(repository: Path) -> list[TritonModel]:
    """The Triton model directories of a built repository, the served model (the record's) last, so that
    the models it is composed of load before it."""
    record = read_record(repository)
    if record is None:
        raise ModelSetError(f"{repository} is not a built repository (no {RECORD_FILE})")
    main = str(record["model_name"])
    names = sorted(
        entry.name
        for entry in repository.iterdir()
        if entry.is_dir() and (entry / "config.pbtxt").is_file() and entry.name != main
    )
    return [TritonModel(name, repository / name) for name in [*names, main]]


def desired_links(desired: Mapping[str, Path]) -> dict[str, Path]:
    """Triton model name → directory, over every desired repository; a Triton model claimed by two
    repositories is refused (Triton has one namespace per server)."""
    links: dict[str, Path] = {}
    owners: dict[str, str] = {}
    for served_name, repository in desired.items():
        record = read_record(repository)
        if record is not None and record.get("model_name") != served_name:
            raise ModelSetError(
                f"repository {repository} serves model {record.get('model_name')!r}, not {served_name!r}: "
                "build it with --model-name " + served_name
            )
        for model in triton_models(repository):
            if model.name == SHARED_HOST:
                raise ModelSetError(
                    f"{SHARED_HOST!r} is the shared runtime's own model: name the model otherwise"
                )
            if model.name in links:
                raise ModelSetError(
                    f"Triton model {model.name!r} is in both {owners[model.name]!r} and {served_name!r}"
                )
            links[model.name] = model.directory.absolute()
            owners[model.name] = served_name
    return links


def shareable_version(directory: Path) -> Path | None:
    """The version directory of a Triton model that the shared host can serve (an `encoder` Python model
    with batching, built with the host's runtime files beside it), else None."""
    try:
        config = (directory / "config.pbtxt").read_text()
    except OSError:
        return None
    batching = re.search(r"^max_batch_size: (\d+)$", config, re.MULTILINE)
    if ENCODER_ROLE_LINE not in config or not batching or int(batching.group(1)) == 0:
        return None
    versions = sorted(entry for entry in directory.iterdir() if entry.is_dir() and entry.name.isdigit())
    if len(versions) != 1 or not all((versions[0] / name).is_file() for name in HOST_RUNTIME_FILES):
        return None
    return versions[0]


def forwarder_config(config: str, server: str) -> str:
    """A packed encoder's config.pbtxt as its forwarder: the `forward` role on one CPU instance (the host
    holds the model on the server's device; a forwarder must not create a CUDA context of its own), and
    `server`, the HTTP address through which it has the host load its model while it loads
    (runtime/forwarder.py says why not at warm-up)."""
    config = config.replace(ENCODER_ROLE_LINE, FORWARD_ROLE_LINE)
    config = INSTANCE_GROUP.sub("instance_group [ { kind: KIND_CPU count: 1 } ]", config)
    parameter = f'parameters {{ key: "{SERVER_PARAMETER}" value {{ string_value: "{server}" }} }}'
    return f"{config.rstrip()}\n{parameter}\n"


def _generated(shared: Path, name: str, files: Mapping[str, str], links: Mapping[str, Path]) -> Path:
    """A generated model directory under `shared`, named by its content, written whole before it appears
    (a rename), and kept as it is when it already exists."""
    digest = hashlib.sha256(json.dumps([files, {k: str(v) for k, v in links.items()}]).encode()).hexdigest()
    directory = shared / f"{name}-{digest[:16]}"
    if directory.is_dir():
        return directory
    staging = shared / f".{directory.name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for relative, text in files.items():
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        (staging / relative).write_text(text)
    for relative, target in links.items():
        (staging / relative).symlink_to(target, target_is_directory=target.is_dir())
    os.replace(staging, directory)
    return directory


def forwarder_directory(shared: Path, name: str, model: Path, server: str) -> Path:
    """The Triton model directory serving the built model `model` through the host of `server`."""
    files = {"config.pbtxt": forwarder_config((model / "config.pbtxt").read_text(), server)}
    links = {entry.name: entry.absolute() for entry in model.iterdir() if entry.name != "config.pbtxt"}
    return _generated(shared, name, files, links)


def host_directory(shared: Path, runtime: Path, kind: str) -> Path:
    """The host model's directory: its config on `kind` (KIND_CPU, KIND_GPU) and the runtime files it
    runs, copied from `runtime` (a packed model's version directory)."""
    files = {"config.pbtxt": HOST_CONFIG.format(name=SHARED_HOST, kind=kind)}
    files |= {f"1/{name}": (runtime / name).read_text() for name in HOST_RUNTIME_FILES}
    return _generated(shared, SHARED_HOST, files, {})


def shared_links(
    served: Path, links: Mapping[str, Path], runtime: SharedRuntime, server: str
) -> dict[str, Path]:
    """`links` with every shareable encoder served through the host of `server` (tritonserver's HTTP
    address, as the forwarders reach it), the host first; `links` as given when none is shareable. A host
    already served is kept while it exists, so that adding a model does not restart the models already
    packed."""
    versions = {name: shareable_version(directory) for name, directory in links.items()}
    runtimes = [version for version in versions.values() if version is not None]
    if not runtimes:
        return dict(links)
    shared = runtime.directory
    current_host = served / SHARED_HOST
    host = current_host.resolve() if current_host.is_symlink() and current_host.exists() else None
    if host is None or host.parent != shared.resolve() or runtime.host_kind not in _config_of(host):
        host = host_directory(shared, runtimes[0], runtime.host_kind)
    result = {SHARED_HOST: host}
    for name, directory in links.items():
        is_shared = versions[name] is not None
        result[name] = forwarder_directory(shared, name, directory, server) if is_shared else directory
    return result


def _config_of(directory: Path) -> str:
    with contextlib.suppress(OSError):
        return (directory / "config.pbtxt").read_text()
    return ""


def remove_unused_generated(served: Path, shared: Path) -> None:
    """Delete the generated directories no served link points at any more."""
    if not shared.is_dir():
        return
    used = {entry.resolve() for entry in served.iterdir() if entry.is_symlink()}
    for directory in shared.iterdir():
        if directory.resolve() not in used:
            shutil.rmtree(directory, ignore_errors=True)


class TritonRepositoryClient:
    """Triton's HTTP repository and health API (the part a model set needs), standard library only."""

    def __init__(self, http_url: str) -> None:
        self.base = http_url if http_url.startswith("http") else f"http://{http_url}"

    def _post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(f"{self.base}{path}", data=data, method="POST")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                detail = str(json.loads(detail).get("error", detail))
            raise ModelLoadError(detail) from exc
        return json.loads(text) if text else None

    def index(self) -> list[dict[str, Any]]:
        """Every model Triton knows of, with state (READY, UNAVAILABLE, LOADING…) and reason."""
        return list(self._post("/v2/repository/index") or [])

    def load(self, name: str) -> None:
        self._post(f"/v2/repository/models/{name}/load")

    def unload(self, name: str) -> None:
        self._post(f"/v2/repository/models/{name}/unload")


class ModelLoadError(RuntimeError):
    """Triton refused a repository request; the message is Triton's."""


def _link(served: Path, name: str, target: Path) -> bool:
    """Point `served/name` at `target` in one rename; False when it already did."""
    link = served / name
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return False
    staging = served / f".{name}.link-{os.getpid()}"
    staging.unlink(missing_ok=True)
    staging.symlink_to(target, target_is_directory=True)
    os.replace(staging, link)
    return True


def reconcile(
    served: Path,
    desired: Mapping[str, Path],
    client: TritonRepositoryClient,
    failed_before: Mapping[str, Path] | None = None,
    shared_runtime: SharedRuntime | None = None,
) -> ReconcileReport:
    """Make Triton's loaded set (over `served`, a directory of symlinks Triton was started on) exactly the
    models of `desired` (served model name → built repository). Idempotent: run it again to retry.
    `failed_before` (Triton model → directory whose load failed) is not retried until its directory
    changes: a broken repository stays broken, and every load of it costs each replica a stub start.
    `shared_runtime` serves the shareable encoders through one host model."""
    served.mkdir(parents=True, exist_ok=True)
    links = desired_links(desired)
    if shared_runtime is not None:
        links = shared_links(served, links, shared_runtime, client.base)
    report = ReconcileReport(links=links)
    ready = {str(m["name"]) for m in client.index() if m.get("state") == "READY"}
    for name, target in links.items():  # composing models come before the model made of them
        changed = _link(served, name, target)
        if not changed and (failed_before or {}).get(name) == target:
            report.failed[name] = "not retried: its last load failed and its repository has not changed"
            continue
        if changed or name not in ready:
            try:
                client.load(name)
                report.loaded.append(name)
            except ModelLoadError as exc:
                report.failed[name] = str(exc)
    for entry in sorted(served.iterdir()):
        if entry.name.startswith(".") or entry.name in links:
            continue
        try:
            client.unload(entry.name)
            report.unloaded.append(entry.name)
        except ModelLoadError as exc:
            report.failed[entry.name] = str(exc)
            continue
        entry.unlink()
    if shared_runtime is not None:
        remove_unused_generated(served, shared_runtime.directory)
    return report


def read_desired(path: Path, root: Path | None = None) -> dict[str, Path]:
    """The desired set from the agent's mounted file; repositories relative to `root` (the cache volume)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    models = data.get("models") or {}
    base = root or Path("/")
    return {str(name): base / str(spec["repository"]) for name, spec in models.items()}


def agent_main(argv: list[str] | None = None) -> int:
    """The server pod's agent: reconcile Triton's loaded set against the mounted desired file, forever."""
    parser = argparse.ArgumentParser(prog="modeldeploy-agent", description=agent_main.__doc__)
    parser.add_argument("--desired", type=Path, required=True, help="the mounted ConfigMap's models.json")
    parser.add_argument("--repositories", type=Path, required=True, help="the cache volume (read-only)")
    parser.add_argument("--served", type=Path, required=True, help="Triton's --model-repository (writable)")
    parser.add_argument("--triton", default="127.0.0.1:8000")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument(
        "--shared-runtime",
        type=Path,
        help="serve the shareable encoders through one host model, generating its model directories here "
        "(a writable directory Triton sees at the same path)",
    )
    parser.add_argument("--host-kind", choices=("KIND_CPU", "KIND_GPU"), default="KIND_CPU")
    args = parser.parse_args(argv)
    client = TritonRepositoryClient(args.triton)
    last = ""
    failed: dict[str, Path] = {}
    while True:
        try:
            desired = read_desired(args.desired, args.repositories)
            report = reconcile(
                args.served,
                desired,
                client,
                failed,
                SharedRuntime(args.shared_runtime, args.host_kind) if args.shared_runtime else None,
            )
            failed = {name: report.links[name] for name in report.failed if name in report.links}
            line = json.dumps({"loaded": report.loaded, "unloaded": report.unloaded, "failed": report.failed})
        except (ModelSetError, OSError, ModelLoadError) as exc:
            line = json.dumps({"error": str(exc)})
        if line != last:  # one log line per change, not one per interval
            print(line, file=sys.stderr, flush=True)
            last = line
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(agent_main())
