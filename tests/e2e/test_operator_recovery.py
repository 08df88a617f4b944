"""The operator killed mid-work, and the operator at rest.

Here the operator watches one namespace (``--namespace``) with the chart rendered for that case
(``watchNamespaces``: a Role and RoleBinding in the namespace plus the small ClusterRole), so the
chart's namespaced RBAC is exercised too. It resyncs every ``RESYNC_SECONDS``.

1. Twenty ModelDeployments are applied at once and the operator is SIGKILLed as soon as it has started
   writing children. A new operator process must converge with no duplicate and no orphaned object
   and without rolling any pods (the Deployments it rendered before the crash are the ones it renders
   after).
2. After convergence, a full resync period passes with zero write requests from the operator's user in
   the apiserver's audit log, while its reconcile counter shows that it did look at every object.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modeldeploy_dev.devcluster import DevCluster
from modeldeploy_dev.harness import (
    MANAGED_BY_SELECTOR,
    NAME_LABEL,
    ChartRbac,
    KubeApi,
    OperatorProcess,
    assert_no_forbidden,
    condition,
    install_chart_rbac,
    install_crds,
    model_deployment,
    models_namespace,
    owned_by,
    pods_of,
    running_ready,
    unique_name,
    wait_until,
)

pytestmark = pytest.mark.cluster

COUNT = 20
RESYNC_SECONDS = 10
CONVERGE_TIMEOUT = 180.0
SOURCE = "hf://google-bert/bert-base-uncased"
# Kinds the operator may create for these specs, and where to look for strays.
CHILD_KINDS = ("deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets", "jobs")


def spec_of(index: int) -> dict[str, Any]:
    """A mix: fixed single replicas, fixed pairs (with a PodDisruptionBudget), HPA-autoscaled."""
    spec: dict[str, Any] = {
        "model": {"source": SOURCE, "task": "text-classification", "revision": f"rev-{index}"}
    }
    if index % 4 == 1:
        spec["replicas"] = 2
    elif index % 4 == 2:
        spec["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3, "metric": "pendingRequests"}
    else:
        spec["replicas"] = 1
    return spec


def expected_kinds(spec: dict[str, Any]) -> set[str]:
    kinds = {"deployments", "services"}
    if "autoscaling" in spec:
        kinds |= {"horizontalpodautoscalers", "poddisruptionbudgets"}
    elif spec.get("replicas", 1) > 1:
        kinds.add("poddisruptionbudgets")
    return kinds


def desired_replicas(spec: dict[str, Any]) -> int:
    return int(spec["autoscaling"]["minReplicas"] if "autoscaling" in spec else spec.get("replicas", 1))


NAMES = [f"model-{i:02d}" for i in range(COUNT)]
SPECS = {name: spec_of(i) for i, name in enumerate(NAMES)}


@pytest.fixture(scope="module")
def watched(cluster: DevCluster) -> Iterator[str]:
    install_crds(cluster)
    with models_namespace(cluster, "recovery") as name:
        yield name


@pytest.fixture(scope="module")
def rbac(cluster: DevCluster, watched: str) -> Iterator[ChartRbac]:
    chart_rbac = install_chart_rbac(
        cluster, release="md-recovery", namespace=unique_name("modeldeploy-ops"), watch_namespaces=[watched]
    )
    assert {obj["kind"] for obj in chart_rbac.objects} >= {"Role", "RoleBinding"}
    yield chart_rbac
    chart_rbac.uninstall(cluster)


@pytest.fixture(scope="module")
def operator_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator") / "operator.log"


def new_operator(rbac: ChartRbac, watched: str, log: Path) -> OperatorProcess:
    return OperatorProcess(
        rbac.kubeconfig, log, scope=("--namespace", watched), resync_seconds=RESYNC_SECONDS
    )


@pytest.fixture(scope="module")
def operators() -> Iterator[list[OperatorProcess]]:
    """Every operator process of this module, latest last; the resync test uses the crash test's second."""
    started: list[OperatorProcess] = []
    yield started
    for process in started:
        process.stop()


def converged(api: KubeApi, namespace: str) -> list[str]:
    """Names of the ModelDeployments whose status, children and pods are all as desired."""
    done = []
    for md in api.model_deployments(namespace):
        name = md["metadata"]["name"]
        status = md.get("status") or {}
        if status.get("observedGeneration") != md["metadata"]["generation"]:
            continue
        available = condition(md, "Available")
        if available is None or available["status"] != "True":
            continue
        pods = [p for p in pods_of(api, namespace, name) if running_ready(p)]
        if len(pods) != desired_replicas(SPECS[name]):
            continue
        if all(api.child(kind, namespace, name) for kind in expected_kinds(SPECS[name])):
            done.append(name)
    return done


def resync_reconciles(metrics: str) -> float:
    """How many reconciles the periodic resync has run: ``modeldeploy_reconcile_total{trigger="resync"}``."""
    total, found = 0.0, False
    for line in metrics.splitlines():
        match = re.match(r"^modeldeploy_reconcile_total\{([^}]*)\}\s+(\S+)$", line)
        if match and 'trigger="resync"' in match.group(1):
            total += float(match.group(2))
            found = True
    if not found and "modeldeploy_reconcile_total" not in metrics:
        raise AssertionError(f"the operator's /metrics has no modeldeploy_reconcile_total:\n{metrics[:3000]}")
    return total


def test_sigkill_mid_reconcile_then_restart_converges_without_duplicates_or_orphans(
    cluster: DevCluster,
    api: KubeApi,
    rbac: ChartRbac,
    watched: str,
    operator_log: Path,
    operators: list[OperatorProcess],
    tmp_path: Path,
) -> None:
    first = new_operator(rbac, watched, operator_log)
    operators.append(first)
    first.start()
    mark = cluster.audit_log.mark()
    manifests = tmp_path / "models.json"
    items = [model_deployment(name, SPECS[name]) for name in NAMES]
    manifests.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    cluster.kubectl("apply", "-n", watched, "-f", str(manifests))

    # Kill as soon as the operator has created some children: it is then mid-way through the twenty.
    def started_writing() -> bool:
        creates = [
            e for e in cluster.audit_log.writes(user=rbac.user, since=mark) if e.verb in {"create", "patch"}
        ]
        return len([e for e in creates if e.resource in {"deployments", "services"}]) >= 3

    wait_until("the operator to start creating children", started_writing, timeout=60, interval=0.02)
    first.kill()
    assert not first.running
    assert_no_forbidden(cluster, first, rbac.user, since=mark)
    at_kill = {md["metadata"]["name"]: md for md in api.model_deployments(watched)}
    unfinished = [
        name
        for name, md in at_kill.items()
        if (md.get("status") or {}).get("observedGeneration") != md["metadata"]["generation"]
        or api.child("deployments", watched, name) is None
    ]
    assert unfinished, "the operator finished all twenty before it could be killed; the test proved nothing"

    second = new_operator(rbac, watched, operator_log)
    operators.append(second)
    second.start()
    try:
        wait_until(f"all {COUNT} ModelDeployments to converge", lambda: len(converged(api, watched)) == COUNT,
                   timeout=CONVERGE_TIMEOUT, interval=1.0)  # fmt: skip
    except AssertionError as err:
        missing = sorted(set(NAMES) - set(converged(api, watched)))
        raise AssertionError(f"{err}; not converged: {missing}\n{second.log_tail()}") from None

    uids = {md["metadata"]["name"]: md["metadata"]["uid"] for md in api.model_deployments(watched)}
    assert set(uids) == set(NAMES)
    # Every managed object belongs to a live ModelDeployment (no orphans), and each ModelDeployment has
    # exactly one object of each kind it needs and none it does not need (no duplicates).
    per_owner: Counter[tuple[str, str]] = Counter()
    for kind in CHILD_KINDS:
        for obj in api.items(kind, watched, MANAGED_BY_SELECTOR):
            owner = obj["metadata"]["labels"][NAME_LABEL]
            assert owner in uids and owned_by(obj, uids[owner]), f"orphaned {kind}/{obj['metadata']['name']}"
            per_owner[(owner, kind)] += 1
    for name in NAMES:
        for kind in CHILD_KINDS:
            expected = 1 if kind in expected_kinds(SPECS[name]) else 0
            assert per_owner[(name, kind)] == expected, (
                f"{name}: {per_owner[(name, kind)]} {kind}, want {expected}"
            )
        # One ReplicaSet per Deployment: the restarted operator rendered the same pod template, so
        # nothing rolled; and exactly the desired pods.
        replica_sets = api.items("replicasets", watched, f"{NAME_LABEL}={name}")
        assert len(replica_sets) == 1, f"{name} has {len(replica_sets)} ReplicaSets: the crash caused a roll"
        assert len(pods_of(api, watched, name)) == desired_replicas(SPECS[name])
    assert second.running and second.healthy()
    assert_no_forbidden(cluster, second, rbac.user, since=mark)


def test_resync_after_convergence_writes_nothing(
    cluster: DevCluster, api: KubeApi, rbac: ChartRbac, watched: str, operators: list[OperatorProcess]
) -> None:
    if len(operators) < 2 or not operators[-1].running:
        pytest.fail("needs the restarted operator of the crash test above, which did not get that far")
    operator = operators[-1]
    assert len(converged(api, watched)) == COUNT

    # Convergence is also quiet: wait until a few seconds pass without a write (late status updates of
    # pods turning Ready are legitimate), bounded so that an operator that never stops writing fails.
    def quiet() -> bool:
        mark = cluster.audit_log.mark()
        time.sleep(3)
        return not cluster.audit_log.writes(user=rbac.user, since=mark)

    wait_until("the operator to stop writing after convergence", quiet, timeout=60, interval=0)

    mark = cluster.audit_log.mark()
    reconciled_before = resync_reconciles(operator.metrics())
    # A full period and then some, so that every object's resync has certainly come due once.
    time.sleep(RESYNC_SECONDS * 1.5 + 2)
    writes = cluster.audit_log.writes(user=rbac.user, since=mark)
    reconciled_after = resync_reconciles(operator.metrics())

    assert reconciled_after - reconciled_before >= COUNT, (
        f"only {reconciled_after - reconciled_before} resync reconciles in {RESYNC_SECONDS * 1.5 + 2:.0f} s "
        f"(resync every {RESYNC_SECONDS} s): the resync did not run, so zero writes would prove nothing"
    )
    assert not writes, "writes during a no-op resync:\n" + "\n".join(
        f"{e.verb} {e.resource}{'/' + e.subresource if e.subresource else ''} {e.namespace}/{e.name}"
        for e in writes
    )
    assert operator.running and operator.healthy()
