"""The RBAC check of the end-to-end tests is not vacuous.

Every operator test fails when the operator meets an RBAC denial (``assert_no_forbidden``). Here the
chart's RBAC is rendered for one namespace as usual, then one verb the operator needs ("patch" on
Services) is taken out of the Role before it is applied: the check must catch the denial, and the
operator must report it in the status instead of crashing.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modeldeploy.reconcile import REFUSED_RETRY_SECONDS
from modeldeploy_dev.devcluster import DevCluster
from modeldeploy_dev.harness import (
    OperatorProcess,
    condition,
    forbidden_requests,
    install_crds,
    model_deployment,
    models_namespace,
    render_chart_rbac,
    unique_name,
    wait_until,
)

pytestmark = pytest.mark.cluster

# How long the Role stays broken after the first refusal (the scenario: restored after 20 s).
RESTORE_AFTER_SECONDS = 20.0


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
    with models_namespace(cluster, "rbac") as name:
        yield name


@dataclass
class LackingOperator:
    """The operator running as the chart's ServiceAccount, its Role lacking one verb."""

    operator: OperatorProcess
    user: str
    mark: int
    complete: list[dict[str, Any]]

    def restore(self, cluster: DevCluster) -> None:
        """Apply the chart's complete RBAC: what an administrator fixing the Role does."""
        cluster.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": self.complete})
        )


@contextlib.contextmanager
def operator_lacking(
    cluster: DevCluster,
    watched: str,
    tmp_path: Path,
    resource: str,
    verb: str,
    resync_seconds: int | None = None,
) -> Iterator[LackingOperator]:
    operator_namespace = unique_name("modeldeploy-lacking")
    objects = render_chart_rbac(cluster, "md-lacking", operator_namespace, watch_namespaces=[watched])
    lacking = without_verb(objects, resource, verb)
    cluster.kubectl("create", "namespace", operator_namespace)
    try:
        cluster.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": lacking})
        )
        account = next(obj for obj in lacking if obj["kind"] == "ServiceAccount")["metadata"]["name"]
        kubeconfig = cluster.service_account_kubeconfig(operator_namespace, account)
        user = f"system:serviceaccount:{operator_namespace}:{account}"
        mark = cluster.audit_log.mark()
        operator = OperatorProcess(
            kubeconfig,
            tmp_path / "operator.log",
            scope=("--namespace", watched),
            resync_seconds=resync_seconds,
        )
        with operator:
            yield LackingOperator(operator, user, mark, objects)
    finally:
        for obj in lacking:
            if obj["kind"] in {"ClusterRole", "ClusterRoleBinding"}:
                cluster.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], check=False)
        cluster.kubectl("delete", "namespace", operator_namespace, "--wait=false", check=False)


def ready_of(cluster: DevCluster, namespace: str, name: str) -> dict[str, Any]:
    md = json.loads(cluster.kubectl("get", f"mdeploy/{name}", "-n", namespace, "-o", "json").stdout)
    return condition(md, "Ready") or {}


def test_a_verb_missing_from_the_chart_role_is_caught(
    cluster: DevCluster, watched: str, tmp_path: Path
) -> None:
    with operator_lacking(cluster, watched, tmp_path, "services", "patch") as lacking:
        md = model_deployment("bert", {"model": {"source": "hf://google-bert/bert-base-uncased"}})
        cluster.kubectl("apply", "-n", watched, "-f", "-", input=json.dumps(md))
        refused = wait_until(
            "the apiserver to refuse the operator's Service",
            lambda: forbidden_requests(cluster, lacking.user, lacking.mark),
        )
        assert all("services" in line and "cannot patch" in line for line in refused), refused

        def reported() -> dict[str, Any] | None:
            ready = ready_of(cluster, watched, "bert")
            return ready if ready.get("reason") == "ApplyFailed" else None

        ready = wait_until("Ready=False/ApplyFailed", reported, timeout=30)
        assert ready["status"] == "False" and "forbidden" in ready["message"], ready
        assert lacking.operator.running and lacking.operator.healthy()


def test_a_refused_child_is_retried_on_the_slow_path_not_left_to_the_resync(
    cluster: DevCluster, watched: str, tmp_path: Path
) -> None:
    """Outcome.retry_after reaches the queue: once the Role is fixed, the next retry (every
    REFUSED_RETRY_SECONDS) converges, although nothing changes that the operator watches and the
    periodic resync is an hour away."""
    with operator_lacking(cluster, watched, tmp_path, "services", "patch", resync_seconds=3600) as lacking:
        md = model_deployment("bert-retry", {"model": {"source": "hf://google-bert/bert-base-uncased"}})
        cluster.kubectl("apply", "-n", watched, "-f", "-", input=json.dumps(md))
        wait_until(
            "Ready=False/ApplyFailed",
            lambda: ready_of(cluster, watched, "bert-retry").get("reason") == "ApplyFailed",
            timeout=30,
        )
        time.sleep(RESTORE_AFTER_SECONDS)
        assert ready_of(cluster, watched, "bert-retry").get("reason") == "ApplyFailed"
        lacking.restore(cluster)
        restored = time.monotonic()
        wait_until(
            "the Service applied and the refusal gone from the status",
            lambda: ready_of(cluster, watched, "bert-retry").get("reason") not in (None, "ApplyFailed"),
            timeout=REFUSED_RETRY_SECONDS + 10,
        )
        elapsed = time.monotonic() - restored
        print(
            f"converged {elapsed:.1f} s after the Role was restored (retry every {REFUSED_RETRY_SECONDS} s)"
        )
        assert elapsed <= REFUSED_RETRY_SECONDS + 10, elapsed
        assert lacking.operator.running and lacking.operator.healthy()
