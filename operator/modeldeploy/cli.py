"""The `modeldeploy` command line.

Sub-commands import their heavy dependencies (torch, kopf, the Kubernetes client) lazily, so that
`modeldeploy crd` and `--help` stay fast and the operator image does not need torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def command_line(name: str, help: str) -> typer.Typer:
    """A command line as this project's are: help when run bare, no completion installer, plain tracebacks."""
    return typer.Typer(
        name=name, help=help, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
    )


app = command_line(
    "modeldeploy", "Serve Hugging Face Transformers checkpoints with NVIDIA Triton on Kubernetes."
)


@app.callback()
def main() -> None:
    """Serve Hugging Face Transformers checkpoints with NVIDIA Triton on Kubernetes."""


@app.command("crd")
def crd_command(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
    api_reference: Annotated[
        bool, typer.Option("--api-reference", help="Print the Markdown API reference instead.")
    ] = False,
) -> None:
    """Print the ModelDeployment CustomResourceDefinition generated from the API models."""
    from modeldeploy.crd import render_api_reference, render_crd_yaml

    text = render_api_reference() if api_reference else render_crd_yaml()
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)


def _register_commands() -> None:
    # Each command lives with the code it drives; those modules import torch/kopf lazily.
    from model_repo import cli as model_repo_cli

    app.command("build", help="Build a Triton model repository from a checkpoint.")(model_repo_cli.build)
    app.command("serve", help="Build a repository and serve it with a local tritonserver.")(
        model_repo_cli.serve
    )

    from modeldeploy import operator_cli

    app.command("operator", help="Run the operator (kopf).")(operator_cli.run_operator)
    app.command("render", help="Print every object the operator would create, offline.")(operator_cli.render)


_register_commands()
