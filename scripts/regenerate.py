"""Rewrite the generated files: crds/, the chart's copy and the API reference in docs/ (`make crd`)."""

from __future__ import annotations

from pathlib import Path

from modeldeploy.crd import render_api_reference, render_crd_yaml
from modeldeploy.server_crd import FILE_NAME as SERVER_CRD_FILE
from modeldeploy.server_crd import render_server_crd_yaml, render_server_reference

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- api-reference:start -->\n", "<!-- api-reference:end -->"
SERVER_START, SERVER_END = "<!-- modelserver-reference:start -->\n", "<!-- modelserver-reference:end -->"


def main() -> None:
    crd = render_crd_yaml()
    # The chart carries an identical copy (Helm installs CRDs only from the chart's own crds/).
    for directory in (ROOT / "crds", ROOT / "charts" / "modeldeploy" / "crds"):
        (directory / "modeldeploy.dev_modeldeployments.yaml").write_text(crd)
        (directory / SERVER_CRD_FILE).write_text(render_server_crd_yaml())
    reference_path = ROOT / "docs" / "api-reference.md"
    reference = reference_path.read_text()
    head, rest = reference.split(START, 1)
    _, tail = rest.split(END, 1)
    reference = head + START + render_api_reference() + END + tail
    if SERVER_START not in reference:
        reference += f"\n## ModelServer (docs/packing.md)\n\n{SERVER_START}{SERVER_END}\n"
    head, rest = reference.split(SERVER_START, 1)
    _, tail = rest.split(SERVER_END, 1)
    reference_path.write_text(head + SERVER_START + render_server_reference() + SERVER_END + tail)


if __name__ == "__main__":
    main()
