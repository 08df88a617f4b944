"""Generate the ModelDeployment CustomResourceDefinition from the pydantic models (and, for server_crd.py,
the parts every CRD of this API shares: the definition, its printer columns, its reference tables).

Kubernetes wants a *structural* OpenAPI v3 schema: every node typed, no `$ref`, no nullable `anyOf`, no
`title`. Pydantic's JSON schema is close; this module inlines the references and rewrites the rest.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from modeldeploy import api

# Keys pydantic emits that a structural schema must not carry.
_DROPPED_KEYS = {"title", "$defs", "discriminator"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        # A field's own description and default win over the referenced type's.
        target.update(node)
        node = target
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = node.pop("allOf")[0]
        node = {**_resolve(inner, defs), **node}
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [option for option in node["anyOf"] if option != {"type": "null"}]
        if len(options) == 1:
            del node["anyOf"]
            node = {**_resolve(options[0], defs), **node}
    if node.get("default", 0) is None:
        del node["default"]
    # Structural schemas forbid additionalProperties beside properties; pruning drops unknown fields.
    if "properties" in node or node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("additionalProperties", None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    return {key: _resolve(value, defs) for key, value in node.items() if key not in _DROPPED_KEYS}


def structural(model: type[api.ApiModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.get("$defs", {})
    resolved: dict[str, Any] = _resolve(schema, defs)
    _fix_enums(resolved)
    return resolved


def _fix_enums(node: Any) -> None:
    """Give enum nodes an explicit type (pydantic omits it for some Literal/StrEnum shapes)."""
    if isinstance(node, dict):
        if "enum" in node and "type" not in node:
            node["type"] = "string"
        if "properties" in node and "type" not in node:
            node["type"] = "object"
        for value in node.values():
            _fix_enums(value)
    elif isinstance(node, list):
        for item in node:
            _fix_enums(item)


def column(name: str, json_path: str, kind: str = "string") -> dict[str, Any]:
    """An additionalPrinterColumn of `kubectl get`."""
    return {"name": name, "type": kind, "jsonPath": json_path}


def printer_columns(*columns: dict[str, Any]) -> list[dict[str, Any]]:
    """Ready first and Age last, as kubectl shows built-in kinds; `columns` between them."""
    return [
        column("Ready", '.status.conditions[?(@.type=="Ready")].status'),
        *columns,
        column("Age", ".metadata.creationTimestamp", "date"),
    ]


def custom_resource_definition(
    names: dict[str, Any],
    description: str,
    spec_schema: dict[str, Any],
    status_schema: dict[str, Any],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    """A namespaced kind of this API group with status and scale subresources (spec.replicas,
    status.replicas and status.selector); `names` as in the CRD (kind, plural, singular, shortNames)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{names['plural']}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "modeldeploy", "app.kubernetes.io/part-of": "modeldeploy"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": names["kind"],
                "listKind": f"{names['kind']}List",
                "plural": names["plural"],
                "singular": names["singular"],
                "shortNames": names["shortNames"],
                "categories": ["all", "modeldeploy"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version."},
                                "kind": {"type": "string", "description": "Kind."},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def build_crd() -> dict[str, Any]:
    spec_schema = structural(api.ModelDeploymentSpec)
    # Nested objects with defaults: the API server only defaults inside an object that exists, so
    # default the parent to {} and let its children's defaults fill it (no perpetual GitOps diff).
    for name in ("triton", "resources"):
        spec_schema["properties"][name]["default"] = {}
    spec_schema["properties"]["triton"]["properties"]["dynamicBatching"]["default"] = {}
    return custom_resource_definition(
        {"kind": api.KIND, "plural": api.PLURAL, "singular": api.SINGULAR, "shortNames": api.SHORT_NAMES},
        (
            "ModelDeployment serves a Hugging Face Transformers checkpoint with NVIDIA Triton Inference "
            "Server: the operator generates the Triton model repository from the checkpoint and runs the "
            "pods, Service and autoscaler."
        ),
        spec_schema,
        structural(api.ModelDeploymentStatus),
        printer_columns(
            column("Phase", ".status.phase"),
            column("Reason", ".status.reason"),
            column("Model", ".spec.model.source"),
            column("Format", ".status.modelRepository.format"),
            column("Replicas", ".status.replicaSummary"),
            column("Progress", ".status.modelRepository.progress.summary"),
            column("Rollout", ".status.rollout.summary"),
        ),
    )


class Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"' if "\n" in data else None)


Dumper.add_representer(str, _str_presenter)


def render_crd_yaml() -> str:
    header = "# Generated by `modeldeploy crd` from operator/modeldeploy/api.py. Do not edit.\n"
    return header + yaml.dump(build_crd(), Dumper=Dumper, sort_keys=False, width=100)


def reference_rows(node: dict[str, Any], path: str) -> list[str]:
    rows: list[str] = []
    for name, child in node.get("properties", {}).items():
        child_path = f"{path}.{name}"
        kind = child.get("type", "int-or-string" if child.get("x-kubernetes-int-or-string") else "")
        if kind == "array" and "type" in child.get("items", {}):
            kind = f"[]{child['items']['type']}"
        details = []
        if "enum" in child:
            details.append("one of " + ", ".join(f"`{value}`" for value in child["enum"]))
        if "default" in child and child["default"] != {}:
            details.append(f"default `{child['default']}`")
        if "minimum" in child or "maximum" in child:
            details.append(f"range {child.get('minimum', '')}..{child.get('maximum', '')}")
        if name in node.get("required", []):
            details.append("required")
        description = child.get("description", "").replace("|", "\\|")
        extra = f" ({'; '.join(details)})" if details else ""
        rows.append(f"| `{child_path}` | {kind} | {description}{extra} |")
        if child.get("type") == "object":
            rows.extend(reference_rows(child, child_path))
        elif child.get("type") == "array" and child.get("items", {}).get("type") == "object":
            rows.extend(reference_rows(child["items"], f"{child_path}[]"))
    return rows


def reference_markdown(crd: dict[str, Any], spec_title: str, rules_title: str, status_title: str) -> str:
    """Markdown tables of every spec and status field of a CRD, and its cross-field rules."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    header = "| field | type | description |\n|---|---|---|\n"
    rules = [
        f"- {rule['message']} (`{rule['rule']}`)"
        for _, node in all_nodes(schema["spec"])
        for rule in node.get("x-kubernetes-validations", [])
    ]
    return (
        f"### {spec_title}\n\n"
        + header
        + "\n".join(reference_rows(schema["spec"], "spec"))
        + f"\n\n### {rules_title}\n\n"
        + "\n".join(rules)
        + f"\n\n### {status_title}\n\n"
        + header
        + "\n".join(reference_rows(schema["status"], "status"))
        + "\n"
    )


def render_api_reference() -> str:
    """Markdown tables of every spec and status field, from the same schema as the CRD."""
    return reference_markdown(
        build_crd(),
        "spec",
        "Cross-field rules (CEL, enforced at admission and again by the operator)",
        "status",
    )


def all_nodes(node: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [("", node)]
    for child in node.get("properties", {}).values():
        found.extend(all_nodes(child))
    if isinstance(node.get("items"), dict):
        found.extend(all_nodes(node["items"]))
    return found
