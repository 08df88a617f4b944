"""The `modeldeploy-dev` command line: the local control plane and the demo (development only)."""

from __future__ import annotations

from modeldeploy.cli import command_line
from modeldeploy_dev import demo
from modeldeploy_dev.devcluster import devcluster_app

app = command_line(
    "modeldeploy-dev",
    "Development tooling for modeldeploy (from a checkout): a local control plane and the demo.",
)
app.add_typer(devcluster_app, name="cluster", help="A real local control plane with KWOK GPU nodes.")
app.command("demo", help="Run the whole product on this machine, end to end.")(demo.run_demo)
