"""What the kubelet would run for a container, for the pods that KWOK runs no containers of: the demo
plays the kubelet for one pod's builder init container and its Triton container, and the tests start
Triton the same way."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of a container's command and args: `$(NAME)` becomes the container's
    variable NAME (kept as written when it has none) and `$$` becomes `$`, so `$$(` is a literal `$(`."""
    out: list[str] = []
    index = 0
    while index < len(value):
        if value.startswith("$$", index):
            out.append("$")
            index += 2
            continue
        if value.startswith("$(", index):
            end = value.find(")", index + 2)
            name = value[index + 2 : end] if end != -1 else None
            if name is not None and name in env:
                out.append(env[name])
                index = end + 1
                continue
        out.append(value[index])
        index += 1
    return "".join(out)


@dataclass(frozen=True)
class ContainerCommand:
    """A container's command, args and env (the variables given by value), expanded as the kubelet
    would."""

    command: list[str]
    args: list[str]
    env: dict[str, str]

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]


def container_command(container: dict[str, Any]) -> ContainerCommand:
    env = {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
    return ContainerCommand(
        [expand(part, env) for part in container.get("command", [])],
        [expand(part, env) for part in container.get("args", [])],
        env,
    )


@dataclass(frozen=True)
class TritonCommand:
    """The Triton container's command line, expanded as the kubelet would: `launcher` is what execs
    `tritonserver` (empty when the container runs the binary itself), `flags` are tritonserver's."""

    launcher: list[str]
    flags: list[str]
    env: dict[str, str]


def triton_command(container: dict[str, Any]) -> TritonCommand:
    run = container_command(container)
    if not run.command or run.command[0].rsplit("/", 1)[-1] == "tritonserver":
        # The image's entrypoint, or the binary named outright: every argument is a flag.
        return TritonCommand([], [*run.command[1:], *run.args], run.env)
    return TritonCommand(run.command, run.args, run.env)
