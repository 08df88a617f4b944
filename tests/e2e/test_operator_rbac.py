"""The RBAC check of the end-to-end tests is not vacuous.

Every operator test fails when the operator meets an RBAC denial (``assert_no_forbidden``). Here the
chart's RBAC is rendered for one namespace as usual, then one verb the operator needs ("patch" on
Services) is taken out of the Role before it is applied: the check must catch the denial, and the
operator must report it in the status instead of crashing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_helpers import (
    OperatorProcess,
    condition,
    create_namespace,
    forbidden_requests,
    install_crds,
    model_deployment,
    render_chart_rbac,
    unique_name,
    wait_until,
)

from modeldeploy.devcluster import DevCluster

pytestmark = pytest.mark.cluster


def without_verb(objects: list[dict[str, Any]], resource: str, verb: str) -> list[dict[str, Any]]:
    """The RBAC objects with ``verb`` removed from every Role rule that covers ``resource``."""
    changed = copy.deepcopy(objects)
    removed = 0
    for obj in changed:
        if obj["kind"] != "Role":
            continue
        rules = []
        for rule in obj["rules"]:
            if resource in rule["resources"] and verb in rule["verbs"]:
                removed += 1
                others = [r for r in rule["resources"] if r != resource]
                if others:
                    rules.append({**rule, "resources": others})
                rules.append(
                    {**rule, "resources": [resource], "verbs": [v for v in rule["verbs"] if v != verb]}
                )
            else:
                rules.append(rule)
        obj["rules"] = rules
    assert removed, f"the chart's Role has no {verb} on {resource} to remove"
    return changed


@pytest.fixture
def watched(cluster: DevCluster) -> Iterator[str]:
    install_crds(cluster)
    name = create_namespace(cluster, unique_name("rbac"))
    yield name
    cluster.kubectl(
        "delete", "modeldeployments", "--all", "-n", name, "--wait=true", "--timeout=60s", check=False
    )
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def test_a_verb_missing_from_the_chart_role_is_caught(
    cluster: DevCluster, watched: str, tmp_path: Path
) -> None:
    operator_namespace = unique_name("modeldeploy-lacking")
    objects = render_chart_rbac(cluster, "md-lacking", operator_namespace, watch_namespaces=[watched])
    lacking = without_verb(objects, "services", "patch")
    cluster.kubectl("create", "namespace", operator_namespace)
    try:
        cluster.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": lacking})
        )
        account = next(obj for obj in lacking if obj["kind"] == "ServiceAccount")["metadata"]["name"]
        kubeconfig = cluster.service_account_kubeconfig(operator_namespace, account)
        user = f"system:serviceaccount:{operator_namespace}:{account}"
        mark = cluster.audit_log.mark()
        operator = OperatorProcess(kubeconfig, tmp_path / "operator.log", scope=("--namespace", watched))
        with operator:
            md = model_deployment("bert", {"model": {"source": "hf://google-bert/bert-base-uncased"}})
            cluster.kubectl("apply", "-n", watched, "-f", "-", input=json.dumps(md))
            refused = wait_until(
                "the apiserver to refuse the operator's Service",
                lambda: forbidden_requests(cluster, user, mark),
            )
            assert all("services" in line and "cannot patch" in line for line in refused), refused

            def reported() -> dict[str, Any] | None:
                ready = condition(
                    json.loads(cluster.kubectl("get", "mdeploy/bert", "-n", watched, "-o", "json").stdout),
                    "Ready",
                )
                return ready if ready and ready["reason"] == "ApplyFailed" else None

            ready = wait_until("Ready=False/ApplyFailed", reported, timeout=30)
            assert ready["status"] == "False" and "forbidden" in ready["message"], ready
            assert operator.running and operator.healthy()
    finally:
        for obj in lacking:
            if obj["kind"] in {"ClusterRole", "ClusterRoleBinding"}:
                cluster.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], check=False)
        cluster.kubectl("delete", "namespace", operator_namespace, "--wait=false", check=False)
