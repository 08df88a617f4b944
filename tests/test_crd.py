"""The committed CRD is the one the API models generate, and it is a valid, structural CRD."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from modeldeploy.crd import build_crd, render_api_reference, render_crd_yaml

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "crds" / "modeldeploy.dev_modeldeployments.yaml"
K8S_VERSION = "1.37.0"


def test_committed_crd_is_current() -> None:
    assert COMMITTED.read_text() == render_crd_yaml(), (
        "crds/ is stale: run `make crd` (modeldeploy crd -o crds/modeldeploy.dev_modeldeployments.yaml)"
    )


def test_cli_prints_the_crd() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "modeldeploy"), "crd"], capture_output=True, text=True, check=True
    )
    assert result.stdout == render_crd_yaml()


def test_crd_validates_as_apiextensions_v1() -> None:
    kubernetes_validate.validate(build_crd(), K8S_VERSION, strict=True)


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found.extend(_walk(value, f"{path}.{key}"))
        if "items" in node:
            found.extend(_walk(node["items"], f"{path}[]"))
    return found


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    crd = yaml.safe_load(COMMITTED.read_text())
    result: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    for path, node in _walk(schema):
        assert "$ref" not in node and "title" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf only for int-or-string"


def test_every_spec_field_is_described(schema: dict[str, Any]) -> None:
    undocumented = [
        path
        for path, node in _walk(schema["properties"]["spec"])
        # Scalar array items are explained by their array's description.
        if not node.get("description") and not (path.endswith("[]") and node.get("type") != "object")
    ]
    assert undocumented == []


def test_scale_subresource_and_printer_columns() -> None:
    version = build_crd()["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    names = [column["name"] for column in version["additionalPrinterColumns"]]
    assert names == ["Ready", "Phase", "Reason", "Model", "Format", "Replicas", "Progress", "Rollout", "Age"]


def test_cel_rules_carry_messages(schema: dict[str, Any]) -> None:
    rules = [rule for _, node in _walk(schema) for rule in node.get("x-kubernetes-validations", [])]
    assert len(rules) >= 10
    for rule in rules:
        assert rule["message"].startswith("spec."), rule


def test_api_reference_is_current() -> None:
    reference = (ROOT / "docs" / "api-reference.md").read_text()
    start, end = "<!-- api-reference:start -->\n", "<!-- api-reference:end -->"
    section = reference[reference.index(start) + len(start) : reference.index(end)]
    assert section == render_api_reference(), "docs/api-reference.md is stale: `make crd` rewrites it"
