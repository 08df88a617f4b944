"""The reconciler's own rules, on the in-memory FakeCluster (modeldeploy_dev.fakecluster): milliseconds
a test, no control plane.

What is tested here is the reconciler's logic: which children it applies, prunes and leaves alone, that a
converged cluster gets no write request at all, the replicas hand-off, ApplyFailed, the cache build gate.
What only the API server and its controllers prove (defaulting, admission, RBAC, pods coming up, the audit
log) stays in test_reconcile_cluster.py and tests/e2e; test_reconcile_cluster.py also runs the scenario of
reconcile_contract.py on both and compares them, which keeps the fake honest.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Collection, Mapping
from typing import Any

import pytest
from reconcile_contract import SETTINGS, SOMEONE, SOURCE, Scenario, managers_of_replicas

from modeldeploy.kinds import (
    DEPLOYMENT,
    HORIZONTAL_POD_AUTOSCALER,
    JOB,
    KEDA_CRD,
    MODEL_DEPLOYMENT,
    PERSISTENT_VOLUME_CLAIM,
    POD_DISRUPTION_BUDGET,
    SCALED_OBJECT,
    SERVICE,
    Kind,
)
from modeldeploy.kube import (
    KubeError,
)
from modeldeploy.labels import MODEL_DIGEST_ANNOTATION, is_owned_by
from modeldeploy.reconcile import REFUSED_RETRY_SECONDS, Outcome, Reconciler
from modeldeploy.round import Round
from modeldeploy.settings import FIELD_MANAGER, REPLICAS_HANDOFF_MANAGER
from modeldeploy_dev.fakecluster import FakeCluster

NAMESPACE = "models"
MODEL = {"source": SOURCE, "task": "text-classification"}


class Fast:
    """One FakeCluster and one reconciler over it."""

    def __init__(self, crds: Collection[str] = (), reconciler: type[Reconciler] = Reconciler) -> None:
        self.cluster = FakeCluster(crds)
        self.reconciler = reconciler(self.cluster, SETTINGS)

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.cluster.create_model_deployment(NAMESPACE, name, spec)

    def reconcile(self, name: str, body: Mapping[str, Any] | None = None) -> Outcome:
        body = body or self.cluster.body(MODEL_DEPLOYMENT, NAMESPACE, name)
        before = len(self.cluster.writes)
        outcome = asyncio.run(self.reconciler.reconcile(body))
        # The reconciler's own count is the number of write requests the cluster accepted.
        assert outcome.writes == len(self.cluster.writes) - before
        return outcome

    def child(self, kind: Kind, name: str) -> dict[str, Any] | None:
        return (
            self.cluster.body(kind, NAMESPACE, name) if self.cluster.exists(kind, NAMESPACE, name) else None
        )

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.cluster.body(MODEL_DEPLOYMENT, NAMESPACE, name).get("status") or {}
        return status

    def conditions(self, name: str) -> dict[str, tuple[str, str]]:
        return {c["type"]: (c["status"], c["reason"]) for c in self.status(name).get("conditions") or []}

    def versions(self) -> dict[tuple[str, str], str]:
        return {
            (kind.kind, name): self.cluster.body(kind, NAMESPACE, name)["metadata"]["resourceVersion"]
            for kind in (
                MODEL_DEPLOYMENT,
                DEPLOYMENT,
                SERVICE,
                POD_DISRUPTION_BUDGET,
                HORIZONTAL_POD_AUTOSCALER,
            )
            for name in self.cluster.names(kind, NAMESPACE)
        }


@pytest.fixture
def fast() -> Fast:
    return Fast()


def test_the_contract_scenario_on_the_fake() -> None:
    """What test_reconcile_cluster.py's contract test expects the real API server to agree with."""
    steps = {step.label: step for step in asyncio.run(Scenario(FakeCluster(), NAMESPACE).run())}
    ours = FIELD_MANAGER
    assert steps["created"].child_writes == [
        ("apply", "Deployment", "contract", ours),
        ("apply", "PodDisruptionBudget", "contract", ours),
        ("apply", "Service", "contract", ours),
    ]
    assert steps["created"].replicas == 3 and steps["created"].replicas_managers == [ours]
    for at_rest in ("at rest", "autoscaled at rest", "fixed at rest"):
        assert steps[at_rest].child_writes == [] and not steps[at_rest].service_version_changed, at_rest
    assert steps["hand edit restored"].child_writes == [("apply", "Deployment", "contract", ours)]
    assert steps["hand edit restored"].image == "triton:t"
    takeover = steps["autoscaler takes over"]
    assert takeover.child_writes == [
        ("apply", "Deployment", "contract", ours),
        ("apply", "Deployment", "contract", REPLICAS_HANDOFF_MANAGER),
        ("apply", "HorizontalPodAutoscaler", "contract", ours),
    ]
    assert takeover.replicas == 3 and takeover.replicas_managers == [REPLICAS_HANDOFF_MANAGER]
    off = steps["autoscaling off"]
    assert off.child_writes == [
        ("apply", "Deployment", "contract", ours),
        ("delete", "HorizontalPodAutoscaler", "contract", ours),
        ("delete", "PodDisruptionBudget", "contract", ours),
    ]
    assert off.children == [("Deployment", "contract"), ("Service", "contract")]
    assert off.replicas == 1 and off.replicas_managers == [ours] and off.foreign_kept


# ------------------------------------------------------------------------------------ the fake itself


def test_the_fake_applies_with_field_ownership() -> None:
    """The server-side-apply rules the reconciler relies on, as the fake models them."""
    cluster = FakeCluster()

    def apply(manifest: dict[str, Any], manager: str) -> dict[str, Any]:
        return asyncio.run(cluster.apply(manifest, field_manager=manager))

    manifest: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": NAMESPACE, "annotations": {"a": "1", "b": "2"}},
        "spec": {
            "replicas": 3,
            "strategy": {"type": "Recreate"},
            "template": {"spec": {"containers": [{"name": "c", "image": "i:1"}]}},
        },
    }
    first = apply(manifest, "one")
    assert first["metadata"]["generation"] == 1
    # The same apply again: accepted, but nothing changes, so no new resourceVersion.
    again = apply(manifest, "one")["metadata"]
    assert again["resourceVersion"] == first["metadata"]["resourceVersion"] and again["generation"] == 1
    # A field the only manager stops setting is removed; replicas falls back to its default.
    dropped = copy.deepcopy(manifest)
    del dropped["metadata"]["annotations"]["b"], dropped["spec"]["replicas"], dropped["spec"]["strategy"]
    second = apply(dropped, "one")
    assert second["metadata"]["annotations"] == {"a": "1"} and second["spec"]["replicas"] == 1
    assert "strategy" not in second["spec"]
    assert second["metadata"]["generation"] == 2
    # A field another manager co-owns stays when one of them stops setting it.
    apply(manifest, "one")
    apply({**manifest, "spec": {"replicas": 3}, "metadata": {"name": "d", "namespace": NAMESPACE}}, "two")
    assert managers_of_replicas(cluster.body(DEPLOYMENT, NAMESPACE, "d")) == ["one", "two"]
    assert apply(dropped, "one")["spec"]["replicas"] == 3
    # A keyed list merges by its key: another manager's container survives ours.
    other = {"name": "sidecar", "image": "s:1"}
    apply({**dropped, "spec": {"template": {"spec": {"containers": [other]}}}}, "two")
    containers = cluster.body(DEPLOYMENT, NAMESPACE, "d")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["c", "sidecar"]


def test_the_fake_collects_the_dependents_of_a_deleted_owner(fast: Fast) -> None:
    fast.create("gc", {"model": MODEL, "replicas": 2})
    fast.reconcile("gc")
    assert fast.cluster.names(DEPLOYMENT, NAMESPACE) == ["gc"]
    fast.cluster.delete_now(MODEL_DEPLOYMENT, NAMESPACE, "gc")
    assert fast.cluster.names(DEPLOYMENT, NAMESPACE) == []
    assert fast.cluster.names(POD_DISRUPTION_BUDGET, NAMESPACE) == []


# ------------------------------------------------------------------------------------ the reconciler


def test_a_converged_reconcile_writes_nothing_and_changes_no_version(fast: Fast) -> None:
    body = fast.create("bert", {"model": MODEL, "replicas": 2})
    first = fast.reconcile("bert")
    assert first.writes >= 4  # Deployment, Service, PodDisruptionBudget, status (+ Events)
    uid = body["metadata"]["uid"]
    for kind in (DEPLOYMENT, SERVICE, POD_DISRUPTION_BUDGET):
        child = fast.child(kind, "bert")
        assert child is not None and is_owned_by(child, uid), kind
        (reference,) = child["metadata"]["ownerReferences"]
        assert reference["controller"] is True
    versions = fast.versions()
    writes = list(fast.cluster.writes)
    for _ in range(3):
        assert fast.reconcile("bert").writes == 0
    assert fast.cluster.writes == writes and fast.versions() == versions
    # One Event for the change of Ready, however often we reconciled.
    assert len([e for e in fast.cluster.events if e["involvedObject"]["name"] == "bert"]) == 1


def test_hand_edits_and_deletions_are_restored(fast: Fast) -> None:
    fast.create("drift", {"model": MODEL})
    fast.reconcile("drift")
    containers = [{"name": "triton", "image": "evil:1"}]
    fast.cluster.edit(
        DEPLOYMENT,
        NAMESPACE,
        "drift",
        {"spec": {"replicas": 4, "template": {"spec": {"containers": containers}}}},
    )
    fast.cluster.delete_now(SERVICE, NAMESPACE, "drift")
    assert fast.reconcile("drift").writes >= 2
    restored = fast.child(DEPLOYMENT, "drift")
    assert restored is not None
    assert restored["spec"]["template"]["spec"]["containers"][0]["image"] == "triton:t"
    assert restored["spec"]["replicas"] == 1 and managers_of_replicas(restored) == [FIELD_MANAGER]
    assert fast.child(SERVICE, "drift") is not None
    assert fast.reconcile("drift").writes == 0


def test_a_removed_field_is_removed_from_the_child(fast: Fast) -> None:
    fast.create("cache-flag", {"model": MODEL, "triton": {"responseCache": True}})
    fast.reconcile("cache-flag")
    fast.create("cache-flag", {"model": MODEL, "triton": {"responseCache": False}})
    assert fast.reconcile("cache-flag").writes >= 1
    deployment = fast.child(DEPLOYMENT, "cache-flag")
    assert deployment is not None
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--cache-config") for a in args)
    assert fast.reconcile("cache-flag").writes == 0


def test_switching_engines_removes_only_the_autoscaler_we_own() -> None:
    fast = Fast(crds={KEDA_CRD})
    spec: dict[str, Any] = {"model": MODEL, "autoscaling": {"minReplicas": 1, "maxReplicas": 3}}
    fast.create("scaled", spec)
    fast.reconcile("scaled")
    assert fast.child(HORIZONTAL_POD_AUTOSCALER, "scaled") is not None
    fast.cluster.create(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": SOMEONE, "namespace": NAMESPACE},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "scaled"}, "maxReplicas": 2},
        }
    )
    spec["autoscaling"] = {"engine": "keda", "minReplicas": 1, "maxReplicas": 3}
    fast.create("scaled", spec)
    fast.reconcile("scaled")
    assert fast.cluster.names(HORIZONTAL_POD_AUTOSCALER, NAMESPACE) == [SOMEONE]
    assert fast.cluster.names(SCALED_OBJECT, NAMESPACE) == ["scaled"]
    spec["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3}
    fast.create("scaled", spec)
    fast.reconcile("scaled")
    assert fast.cluster.names(SCALED_OBJECT, NAMESPACE) == []
    assert fast.cluster.names(HORIZONTAL_POD_AUTOSCALER, NAMESPACE) == ["scaled", SOMEONE]


def test_without_keda_a_keda_spec_says_so_and_touches_no_scaled_object(fast: Fast) -> None:
    fast.create("nokeda", {"model": MODEL, "autoscaling": {"engine": "keda", "maxReplicas": 3}})
    fast.reconcile("nokeda")
    # The fake refuses any request for a kind whose CRD is absent: none was sent.
    assert fast.cluster.refused == []
    assert fast.conditions("nokeda")["AutoscalerReady"] == ("False", "KedaNotInstalled")


def test_an_unowned_object_in_the_way_is_reported_not_adopted(fast: Fast) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "taken", "namespace": NAMESPACE},
        "spec": {"ports": [{"port": 80}]},
    }
    fast.cluster.create(service)
    fast.create("taken", {"model": MODEL})
    outcome = fast.reconcile("taken")
    assert outcome.retry_after == REFUSED_RETRY_SECONDS
    assert fast.conditions("taken")["Ready"] == ("False", "ApplyFailed")
    assert "Service taken already exists and is not managed" in fast.status("taken")["message"]
    live = fast.child(SERVICE, "taken")
    assert live is not None and "ownerReferences" not in live["metadata"]


def test_a_refused_apply_is_apply_failed_and_retried_slowly(fast: Fast) -> None:
    fast.create("refused", {"model": MODEL})
    invalid = 'Deployment.apps "refused" is invalid: spec.template.spec.containers[0].image: Required value'
    fast.cluster.reject(DEPLOYMENT, "refused", invalid)
    outcome = fast.reconcile("refused")
    assert outcome.retry_after == REFUSED_RETRY_SECONDS and not outcome.ready
    assert fast.conditions("refused")["Ready"] == ("False", "ApplyFailed")
    assert invalid in fast.status("refused")["message"]
    assert fast.child(DEPLOYMENT, "refused") is None and fast.child(SERVICE, "refused") is not None
    # Refused again: the status says so already, so nothing is written.
    assert fast.reconcile("refused").writes == 0
    fast.cluster.accept(DEPLOYMENT, "refused")
    assert fast.reconcile("refused").retry_after is None
    assert fast.child(DEPLOYMENT, "refused") is not None
    assert fast.conditions("refused")["Ready"][1] != "ApplyFailed"


def test_a_transient_refusal_is_raised_for_the_queue_to_retry(fast: Fast) -> None:
    fast.create("busy", {"model": MODEL})
    fast.cluster.reject(SERVICE, "busy", "the server is currently unable to handle the request", code=503)
    with pytest.raises(KubeError) as raised:
        fast.reconcile("busy")
    assert raised.value.transient and raised.value.code == 503


class WithoutHandOff(Reconciler):
    """The reconciler minus its replicas hand-off: what the rule prevents."""

    async def _hand_replicas_over(self, current: Round, manifest: dict[str, Any]) -> None:
        return None


@pytest.mark.parametrize(("reconciler", "replicas"), [(Reconciler, 3), (WithoutHandOff, 1)])
def test_turning_autoscaling_on_keeps_the_replica_count(reconciler: type[Reconciler], replicas: int) -> None:
    fast = Fast(reconciler=reconciler)
    fast.create("handoff", {"model": MODEL, "replicas": 3})
    fast.reconcile("handoff")
    fast.create("handoff", {"model": MODEL, "autoscaling": {"minReplicas": 2, "maxReplicas": 5}})
    fast.reconcile("handoff")
    deployment = fast.child(DEPLOYMENT, "handoff")
    assert deployment is not None
    # Without the hand-over, dropping our claim on replicas resets it to the default of 1.
    assert deployment["spec"]["replicas"] == replicas
    assert FIELD_MANAGER not in managers_of_replicas(deployment)
    assert fast.reconcile("handoff").writes == 0  # the hand-over happens once, not on every pass


def test_a_spec_the_operator_cannot_deploy_gets_invalid_spec_once(fast: Fast) -> None:
    fast.create("nocpu", {"model": MODEL, "autoscaling": {"maxReplicas": 3, "metric": "cpu"}})
    outcome = fast.reconcile("nocpu")
    assert outcome.invalid_spec and "spec.resources.requests.cpu" in outcome.invalid_spec[0]
    assert fast.conditions("nocpu")["Ready"] == ("False", "InvalidSpec")
    assert fast.status("nocpu")["phase"] == "Failed"
    assert fast.cluster.names(DEPLOYMENT, NAMESPACE) == []
    assert fast.reconcile("nocpu").writes == 0
    warnings = [e for e in fast.cluster.events if e["reason"] == "InvalidSpec"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"


def _succeed(fast: Fast, job: str) -> None:
    """What the Job controller writes when the build's pod completed."""
    fast.cluster.set_status(
        JOB, NAMESPACE, job, {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    )


def test_the_cache_job_gates_the_deployment_and_old_builds_are_pruned(fast: Fast) -> None:
    spec: dict[str, Any] = {"model": MODEL, "cache": {"size": "1Gi"}}
    fast.create("cached", spec)
    fast.reconcile("cached")
    assert fast.child(PERSISTENT_VOLUME_CLAIM, "cached-cache") is not None
    (first_job,) = fast.cluster.names(JOB, NAMESPACE)
    assert fast.child(DEPLOYMENT, "cached") is None, "no Deployment before the repository is built"
    assert fast.conditions("cached")["ModelRepositoryReady"][1] in {"CacheClaimPending", "Building"}
    fast.cluster.set_status(PERSISTENT_VOLUME_CLAIM, NAMESPACE, "cached-cache", {"phase": "Bound"})
    _succeed(fast, first_job)
    fast.reconcile("cached")
    deployment = fast.child(DEPLOYMENT, "cached")
    assert deployment is not None
    served = deployment["spec"]["template"]["metadata"]["annotations"][MODEL_DIGEST_ANNOTATION]

    # A new revision: built by a second Job while the first repository keeps being served.
    spec["model"] = {**MODEL, "revision": "v2"}
    fast.create("cached", spec)
    fast.reconcile("cached")
    assert len(fast.cluster.names(JOB, NAMESPACE)) == 2
    deployment = fast.child(DEPLOYMENT, "cached")
    assert deployment is not None
    assert deployment["spec"]["template"]["metadata"]["annotations"][MODEL_DIGEST_ANNOTATION] == served
    (second_job,) = set(fast.cluster.names(JOB, NAMESPACE)) - {first_job}
    _succeed(fast, second_job)
    fast.reconcile("cached")
    deployment = fast.child(DEPLOYMENT, "cached")
    assert deployment is not None
    assert deployment["spec"]["template"]["metadata"]["annotations"][MODEL_DIGEST_ANNOTATION] != served
    assert fast.cluster.names(JOB, NAMESPACE) == [second_job], "the build nobody serves is pruned"


def test_a_copy_older_than_our_last_status_write_writes_nothing(fast: Fast) -> None:
    fast.create("lagging", {"model": MODEL})
    fast.reconcile("lagging")
    stale = fast.cluster.body(MODEL_DEPLOYMENT, NAMESPACE, "lagging")
    fast.cluster.edit(MODEL_DEPLOYMENT, NAMESPACE, "lagging", {"metadata": {"labels": {"team": "search"}}})
    # The Deployment controller reports the pod ready: the status changes, and is written.
    fast.cluster.set_status(DEPLOYMENT, NAMESPACE, "lagging", _available(1))
    assert fast.reconcile("lagging").writes >= 1
    fresh = fast.cluster.body(MODEL_DEPLOYMENT, NAMESPACE, "lagging")
    assert int(stale["metadata"]["resourceVersion"]) < int(fresh["metadata"]["resourceVersion"])
    assert stale["status"] != fresh["status"]
    assert fast.reconcile("lagging", body=stale).writes == 0


def _available(replicas: int) -> dict[str, Any]:
    return {
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
    }


class Owned:
    """An inventory as the operator's watches hold it, read from the fake's store."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    def owned_names(self, kind: Kind, owner_uid: str) -> list[str]:
        return [
            name
            for name in self.cluster.names(kind, NAMESPACE)
            if is_owned_by(self.cluster.body(kind, NAMESPACE, name), owner_uid)
        ]

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return []


def test_with_an_inventory_only_wanted_children_are_read_and_unwanted_ones_still_pruned(fast: Fast) -> None:
    reconciler = Reconciler(fast.cluster, SETTINGS, inventory=Owned(fast.cluster))
    spec: dict[str, Any] = {"model": MODEL, "autoscaling": {"minReplicas": 2, "maxReplicas": 3}}
    fast.create("known", spec)
    asyncio.run(reconciler.reconcile(fast.cluster.body(MODEL_DEPLOYMENT, NAMESPACE, "known")))
    fast.cluster.reads.clear()
    asyncio.run(reconciler.reconcile(fast.cluster.body(MODEL_DEPLOYMENT, NAMESPACE, "known")))
    # What it applies (to compare with what it wants), nothing else: no PVC, Job or pod requests.
    assert set(fast.cluster.reads) == {
        "deployments",
        "services",
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
    }
    fast.create("known", {"model": MODEL, "replicas": 1})
    asyncio.run(reconciler.reconcile(fast.cluster.body(MODEL_DEPLOYMENT, NAMESPACE, "known")))
    assert fast.child(HORIZONTAL_POD_AUTOSCALER, "known") is None
    assert fast.child(POD_DISRUPTION_BUDGET, "known") is None


def test_an_object_being_deleted_is_left_to_the_garbage_collector(fast: Fast) -> None:
    body = fast.create("going", {"model": MODEL})
    body["metadata"]["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    outcome = fast.reconcile("going", body=body)
    assert outcome.writes == 0 and outcome.message == "being deleted"
    assert fast.cluster.names(DEPLOYMENT, NAMESPACE) == []
