"""values.schema.json rejects bad values at install time; README.md documents every value."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from chart_helpers import CHART, Helm

# (values, a fragment of helm's error that names the offending value)
BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown top-level key": ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    "unknown nested key (typo)": ({"image": {"repo": "x"}}, "at '/image': additional properties 'repo'"),
    "zero replicas": ({"replicaCount": 0}, "/replicaCount"),
    "replicas as string": ({"replicaCount": "2"}, "/replicaCount"),
    "namespace not a DNS label": ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
    "duplicate namespaces": ({"watchNamespaces": ["a", "a"]}, "/watchNamespaces"),
    "pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "digest not sha256": ({"image": {"digest": "md5:abc"}}, "/image/digest"),
    "tag with a colon": ({"tritonImage": {"tag": "26.07:py3"}}, "/tritonImage/tag"),
    "root uid": ({"podSecurityContext": {"runAsUser": 0}}, "/podSecurityContext/runAsUser"),
    "turning runAsNonRoot off": (
        {"podSecurityContext": {"runAsNonRoot": False}},
        "'runAsNonRoot' not allowed",
    ),
    "port out of range": ({"metricsPort": 70000}, "/metricsPort"),
    "memory not a quantity": ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    "resync zero": ({"resyncSeconds": 0}, "/resyncSeconds"),
    "window not a PromQL range": (
        {"prometheusAdapter": {"rules": {"window": "1 minute"}}},
        "/prometheusAdapter/rules/window",
    ),
    "scrape interval": (
        {"metrics": {"serviceMonitor": {"interval": "soon"}}},
        "/metrics/serviceMonitor/interval",
    ),
    "env var without name": ({"extraEnv": [{"value": "x"}]}, "/extraEnv/0"),
    "rbac flag as string": ({"rbac": {"create": "yes"}}, "/rbac/create"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_are_rejected_by_the_schema(helm: Helm, case: str) -> None:
    values, field = BAD_VALUES[case]
    result = helm.template(values)
    assert result.returncode != 0, f"{case}: helm accepted {values}"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert field in result.stderr, result.stderr


def test_service_account_name_required_without_creating_one(helm: Helm) -> None:
    result = helm.template({"serviceAccount": {"create": False}})
    assert result.returncode != 0
    assert "serviceAccount.name is required when serviceAccount.create is false" in result.stderr


def test_defaults_satisfy_the_schema(helm: Helm) -> None:
    assert helm.template({}).returncode == 0


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        paths: list[str] = []
        for key, value in node.items():
            paths += _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
        return paths
    return [prefix]


def test_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    documented = set()
    for line in readme.splitlines():
        if line.startswith("| `"):
            documented.add(line.split("`")[1])
    missing = []
    for path in _leaf_paths(values):
        # A map documented as a whole (e.g. `resources`) covers its keys.
        parts = path.split(".")
        if not any(".".join(parts[:n]) in documented for n in range(1, len(parts) + 1)):
            missing.append(path)
    assert not missing, f"values missing from charts/modeldeploy/README.md: {missing}"


def test_schema_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: Any, schema_node: dict[str, Any], path: str) -> None:
        assert "type" in schema_node or "properties" in schema_node, f"{path} has no type in the schema"
        if isinstance(node, dict) and "properties" in schema_node:
            for key, value in node.items():
                assert key in schema_node["properties"], f"{path}.{key} is not in values.schema.json"
                walk(value, schema_node["properties"][key], f"{path}.{key}")

    walk(values, schema, "")
