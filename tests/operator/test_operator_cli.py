"""`modeldeploy operator`'s refusals of flags that cannot work together, before anything starts."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from modeldeploy.cli import app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--health-port", "9100", "--metrics-port", "9100"],
            "--health-port and --metrics-port are both 9100",
        ),
        (["--peering", "p", "--standalone"], "--peering and --standalone exclude each other"),
        (["--namespace", "a", "--all-namespaces"], "--namespace and --all-namespaces exclude each other"),
    ],
)
def test_the_operator_refuses_flags_that_cannot_work_together(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["operator", *args])
    assert result.exit_code == 2, result.output
    # Typer draws its error in a box, wrapped to the terminal's width.
    assert message in " ".join(result.output.replace("│", " ").split()), result.output
