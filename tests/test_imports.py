"""The product packages import in one direction: no module imports itself back through others (a cycle
makes import order matter and hides which module owns a contract), and no module imports another's
private (`_name`) names. Every import counts, also those inside functions, which only defer a cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Package directory -> the directory its dotted names are relative to.
PACKAGES = {ROOT / "model_repo": ROOT, ROOT / "operator" / "modeldeploy": ROOT / "operator"}


def _modules(package: Path) -> dict[str, Path]:
    base = PACKAGES[package]
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(base).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, list[str]]]:
    """(imported first-party module, names taken from it) for every import statement in `path`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*anchor, *([source] if source else [])])
            if source not in known:
                continue
            names = []
            for alias in node.names:
                if f"{source}.{alias.name}" in known:  # `from package import submodule`
                    yield f"{source}.{alias.name}", []
                else:
                    names.append(alias.name)
            if names:
                yield source, names


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _graph(package: Path) -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules(package)
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    private = []
    for module, path in modules.items():
        for imported, names in _imports(module, path, known):
            if imported != module:
                graph[module].add(imported)
            private += [f"{module} imports {imported}.{name}" for name in names if _is_private(name)]
    return graph, private


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(module: str) -> list[str] | None:
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported in on_stack:
                return [*stack[stack.index(imported) :], imported]
            if imported not in done:
                found = visit(imported)
                if found:
                    return found
        on_stack.discard(stack.pop())
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            found = visit(module)
            if found:
                return found
    return None


@pytest.mark.parametrize("package", sorted(PACKAGES), ids=lambda path: path.name)
def test_no_import_cycle(package: Path) -> None:
    graph, _ = _graph(package)
    assert sum(len(edges) for edges in graph.values()) > len(graph) / 2, "found almost no imports"
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("package", sorted(PACKAGES), ids=lambda path: path.name)
def test_no_private_names_across_modules(package: Path) -> None:
    _, private = _graph(package)
    assert not private, "; ".join(private)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# Standard-library modules that start, signal or replace processes.
PROCESS_MODULES = frozenset({"subprocess", "multiprocessing", "signal", "pty", "concurrent.futures.process"})


def _stdlib_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _process_runners_reached(start: str) -> dict[str, list[str]]:
    """Every first-party module `start` imports (directly or through others, across both packages) that
    imports a process-running module, with the chain of imports that reaches it."""
    modules = {name: path for package in PACKAGES for name, path in _modules(package).items()}
    known = set(modules)
    chains = {name: [name] for name in modules if name == start or name.startswith(start + ".")}
    todo = list(chains)
    while todo:
        module = todo.pop()
        for imported, _ in _imports(module, modules[module], known):
            if imported not in chains:
                chains[imported] = [*chains[module], imported]
                todo.append(imported)
    return {
        module: chain
        for module, chain in chains.items()
        if _stdlib_imports(modules[module]) & PROCESS_MODULES
    }


def test_the_manifest_builders_reach_nothing_that_runs_processes() -> None:
    """`modeldeploy.manifests` is pure (spec in, manifest out): nothing it imports, however indirectly,
    starts or signals a process (the tritonserver flags it shares with `modeldeploy serve` live in
    `model_repo.triton_args`, apart from `model_repo.triton`, which runs the server)."""
    reached = _process_runners_reached("modeldeploy.manifests")
    assert not reached, "; ".join(" -> ".join(chain) for chain in reached.values())


def test_the_process_runner_finder_finds_the_server_runner() -> None:
    assert "model_repo.triton" in _process_runners_reached("model_repo.cli")
    assert "model_repo.triton" in _process_runners_reached("model_repo.triton")
