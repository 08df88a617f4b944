"""Many built repositories served by one tritonserver in explicit model-control mode.

Triton reads its models from one directory (`served`). Each built repository stays where it was built,
read-only; `served` holds one symlink per Triton model, pointing into it. Reconciling a desired set
(model name → built repository) swaps the symlinks and drives Triton's repository API:

- a new model: link, then load;
- a changed model (another repository): relink atomically, then load again — Triton keeps serving the
  loaded version until the new one is ready, and keeps it if the new one fails to load;
- a removed model: unload, then unlink.

`modeldeploy serve --source … --source …` and the server pods' agent container (`agent_main`) both run
this; the agent needs no Kubernetes credentials: it reads the desired set from a mounted ConfigMap and
talks only to the Triton in its own pod.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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


class ModelSetError(RuntimeError):
    """A desired set that cannot be served as written (an unbuilt repository, a name clash)."""


@dataclass(frozen=True)
class TritonModel:
    """One Triton model directory of a built repository (a python model has one; onnx has several)."""

    name: str
    directory: Path


@dataclass
class ReconcileReport:
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # model → Triton's error


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
            if model.name in links:
                raise ModelSetError(
                    f"Triton model {model.name!r} is in both {owners[model.name]!r} and {served_name!r}"
                )
            links[model.name] = model.directory.absolute()
            owners[model.name] = served_name
    return links


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
) -> ReconcileReport:
    """Make Triton's loaded set (over `served`, a directory of symlinks Triton was started on) exactly the
    models of `desired` (served model name → built repository). Idempotent: run it again to retry.
    `failed_before` (Triton model → directory whose load failed) is not retried until its directory
    changes: a broken repository stays broken, and every load of it costs each replica a stub start."""
    served.mkdir(parents=True, exist_ok=True)
    links = desired_links(desired)
    report = ReconcileReport()
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
    args = parser.parse_args(argv)
    client = TritonRepositoryClient(args.triton)
    last = ""
    failed: dict[str, Path] = {}
    while True:
        try:
            desired = read_desired(args.desired, args.repositories)
            report = reconcile(args.served, desired, client, failed)
            links = desired_links(desired)
            failed = {name: links[name] for name in report.failed if name in links}
            line = json.dumps({"loaded": report.loaded, "unloaded": report.unloaded, "failed": report.failed})
        except (ModelSetError, OSError, ModelLoadError) as exc:
            line = json.dumps({"error": str(exc)})
        if line != last:  # one log line per change, not one per interval
            print(line, file=sys.stderr, flush=True)
            last = line
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(agent_main())
