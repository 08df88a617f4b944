"""Rewrite the generated files: crds/ and the README's API reference (run by `make crd`)."""

from __future__ import annotations

from pathlib import Path

from modeldeploy.crd import render_api_reference, render_crd_yaml

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- api-reference:start -->\n", "<!-- api-reference:end -->"


def main() -> None:
    (ROOT / "crds" / "modeldeploy.dev_modeldeployments.yaml").write_text(render_crd_yaml())
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    readme_path.write_text(head + START + render_api_reference() + END + tail)


if __name__ == "__main__":
    main()
