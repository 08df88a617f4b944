"""`Reconciler.reconcile()` against the real local control plane (kube-apiserver, controller-manager,
scheduler and KWOK): server-side apply by our field manager, no writes once converged (checked in the
apiserver's audit log), drift restored, owned-only pruning, status and Events, the cache build gate.

The reconciler is driven directly (no kopf), as the admin; the operator process with the chart's RBAC is
tests/e2e's job.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from reconcile_contract import Scenario

from modeldeploy.kinds import Kind
from modeldeploy.kube import LightkubeCluster
from modeldeploy.labels import is_owned_by
from modeldeploy.observations import pod_summary
from modeldeploy.reconcile import Outcome, Reconciler
from modeldeploy.settings import FIELD_MANAGER, RenderSettings
from modeldeploy_dev.devcluster import ADMIN_USER, DevCluster
from modeldeploy_dev.direct_reconciler import DirectReconciler
from modeldeploy_dev.fakecluster import FakeCluster
from modeldeploy_dev.harness import wait_until

pytestmark = pytest.mark.cluster

REPO_CRDS = "crds/"
SOURCE = "hf://google-bert/bert-base-uncased"


class Harness(DirectReconciler):
    """One namespace, one reconciler, and kubectl as the admin."""

    def __init__(self, cluster: DevCluster, namespace: str) -> None:
        super().__init__(cluster, RenderSettings(triton_image="triton:t", builder_image="builder:t"))
        self.namespace = namespace

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.cluster.kubectl(*args, "-n", self.namespace, input=input, check=check).stdout

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        out = self.cluster.kubectl(
            "get", resource, name, "-n", self.namespace, "-o", "json", "--show-managed-fields", check=False
        )
        return json.loads(out.stdout) if out.returncode == 0 else None

    def items(self, resource: str, selector: str) -> list[dict[str, Any]]:
        out = self.kubectl("get", resource, "-l", selector, "-o", "json")
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items

    def create(self, name: str, spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": "modeldeploy.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(body))

    def reconcile(self, name: str) -> Outcome:
        body = self.get("modeldeployment", name)
        assert body is not None
        return self.run(self.reconciler.reconcile(body))

    def converge(self, name: str, timeout: float = 60.0) -> Outcome:
        """Reconcile until a pass writes nothing (pods coming up legitimately change the status)."""
        return wait_until(
            f"{name} to converge", lambda: (o := self.reconcile(name)).writes == 0 and o, timeout, tolerate=()
        )

    def status(self, name: str) -> dict[str, Any]:
        body = self.get("modeldeployment", name)
        assert body is not None
        status: dict[str, Any] = body.get("status") or {}
        return status

    def conditions(self, name: str) -> dict[str, tuple[str, str]]:
        return {c["type"]: (c["status"], c["reason"]) for c in self.status(name).get("conditions") or []}


@pytest.fixture(scope="module")
def crds(cluster: DevCluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", REPO_CRDS)
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/modeldeployments.modeldeploy.dev", "--timeout=60s"
    )


@pytest.fixture
def harness(cluster: DevCluster, crds: None) -> Iterator[Harness]:
    namespace = f"reconcile-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    h = Harness(cluster, namespace)
    yield h
    h.close()
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def applied_by_us(obj: dict[str, Any]) -> bool:
    return any(
        entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply"
        for entry in obj["metadata"].get("managedFields") or []
    )


def test_converged_reconcile_sends_no_write_requests(harness: Harness) -> None:
    harness.create("bert", {"model": {"source": SOURCE, "task": "text-classification"}, "replicas": 2})
    first = harness.reconcile("bert")
    assert first.writes >= 4  # Deployment, Service, PodDisruptionBudget, status (+ Events)
    md = harness.get("modeldeployment", "bert")
    assert md is not None
    for resource in ("deployment", "service", "poddisruptionbudget"):
        child = harness.get(resource, "bert")
        assert child is not None and applied_by_us(child), resource
        (reference,) = child["metadata"]["ownerReferences"]
        assert reference["uid"] == md["metadata"]["uid"] and reference["controller"] is True

    wait_until("2 Ready pods", lambda: harness.converge("bert").ready, tolerate=())
    mark = harness.cluster.audit_log.mark()
    for _ in range(3):
        assert harness.reconcile("bert").writes == 0
    time.sleep(1)  # the audit log is written asynchronously
    writes = harness.cluster.audit_log.writes(user=ADMIN_USER, since=mark)
    assert writes == [], [f"{e.verb} {e.resource}/{e.subresource} {e.name}" for e in writes]

    assert harness.conditions("bert") == {
        "ModelRepositoryReady": ("True", "Built"),
        "Available": ("True", "MinimumReplicasAvailable"),
        "AutoscalerReady": ("True", "FixedReplicas"),
        "ScalingReady": ("True", "FixedReplicas"),
        "Ready": ("True", "Serving"),
    }
    status = harness.status("bert")
    assert status["replicaSummary"] == "2/2" and status["phase"] == "Ready"
    events = json.loads(
        harness.kubectl("get", "events", "--field-selector", "involvedObject.name=bert", "-o", "json")
    )
    # One Event per change of Ready: "Ready is True: ..." once, however often we reconciled.
    ours = [
        (e["message"].split(" is ")[0], e["reason"])
        for e in events["items"]
        if e.get("reportingComponent") == FIELD_MANAGER
    ]
    assert ("Ready", "Serving") in ours and len(ours) == len(set(ours)), ours


def test_hand_edits_and_deletions_are_restored(harness: Harness) -> None:
    harness.create("drift", {"model": {"source": SOURCE, "task": "text-classification"}})
    harness.converge("drift")
    deployment = harness.get("deployment", "drift")
    assert deployment is not None
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "evil:1"}]
    harness.kubectl("patch", "deployment", "drift", "--type=json", "-p", json.dumps(patch))
    harness.kubectl("scale", "deployment", "drift", "--replicas=4")
    harness.kubectl("delete", "service", "drift")
    outcome = harness.reconcile("drift")
    assert outcome.writes >= 2
    restored = harness.get("deployment", "drift")
    assert restored is not None
    assert restored["spec"]["template"]["spec"]["containers"][0]["image"] == image
    assert restored["spec"]["replicas"] == 1
    assert harness.get("service", "drift") is not None
    harness.converge("drift")


def test_a_removed_field_is_removed_from_the_child(harness: Harness) -> None:
    spec = {"model": {"source": SOURCE, "task": "text-classification"}, "triton": {"responseCache": True}}
    harness.create("cache-flag", spec)
    harness.converge("cache-flag")
    spec["triton"] = {"responseCache": False}
    harness.create("cache-flag", spec)
    assert harness.reconcile("cache-flag").writes >= 1
    deployment = harness.get("deployment", "cache-flag")
    assert deployment is not None
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--cache-config") for a in args)


def test_switching_engines_removes_only_the_autoscaler_we_own(harness: Harness) -> None:
    spec: dict[str, Any] = {
        "model": {"source": SOURCE, "task": "text-classification"},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
    }
    harness.create("scaled", spec)
    harness.reconcile("scaled")
    hpa = harness.get("horizontalpodautoscaler", "scaled")
    assert hpa is not None and applied_by_us(hpa)
    deployment = harness.get("deployment", "scaled")
    assert deployment is not None
    managed = [e for e in deployment["metadata"]["managedFields"] if e["manager"] == FIELD_MANAGER]
    assert "f:replicas" not in json.dumps(managed), "with an autoscaler, replicas is not ours"

    # Someone else's HPA in the namespace is none of our business.
    other = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "someone-elses"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "scaled"},
            "maxReplicas": 2,
        },
    }
    harness.kubectl("apply", "-f", "-", input=json.dumps(other))

    spec["autoscaling"] = {"engine": "keda", "minReplicas": 1, "maxReplicas": 3}
    harness.create("scaled", spec)
    harness.reconcile("scaled")
    assert harness.get("horizontalpodautoscaler", "scaled") is None
    assert harness.get("horizontalpodautoscaler", "someone-elses") is not None
    # No KEDA in this cluster: said so, not silently ignored.
    assert harness.conditions("scaled")["AutoscalerReady"] == ("False", "KedaNotInstalled")

    del spec["autoscaling"]
    spec["replicas"] = 1
    harness.create("scaled", spec)
    harness.reconcile("scaled")
    assert harness.get("poddisruptionbudget", "scaled") is None
    assert harness.get("horizontalpodautoscaler", "someone-elses") is not None


def test_an_unowned_object_in_the_way_is_reported_not_adopted(harness: Harness) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "taken"},
        "spec": {"ports": [{"port": 80}]},
    }
    harness.kubectl("apply", "-f", "-", input=json.dumps(service))
    harness.create("taken", {"model": {"source": SOURCE, "task": "text-classification"}})
    outcome = harness.reconcile("taken")
    assert outcome.retry_after is not None
    assert harness.conditions("taken")["Ready"] == ("False", "ApplyFailed")
    assert "Service taken already exists and is not managed" in harness.status("taken")["message"]
    live = harness.get("service", "taken")
    assert live is not None and "ownerReferences" not in live["metadata"]


def test_a_spec_the_operator_cannot_deploy_gets_invalid_spec_once(harness: Harness) -> None:
    spec = {
        "model": {"source": SOURCE, "task": "text-classification"},
        "autoscaling": {"maxReplicas": 3, "metric": "cpu"},
    }
    harness.create("nocpu", spec)  # accepted by the CRD
    outcome = harness.reconcile("nocpu")
    assert outcome.invalid_spec and "spec.resources.requests.cpu" in outcome.invalid_spec[0]
    assert harness.conditions("nocpu")["Ready"] == ("False", "InvalidSpec")
    assert harness.status("nocpu")["phase"] == "Failed"
    assert harness.get("deployment", "nocpu") is None
    assert harness.reconcile("nocpu").writes == 0
    events = json.loads(
        harness.kubectl("get", "events", "--field-selector", "involvedObject.name=nocpu", "-o", "json")
    )
    warnings = [e for e in events["items"] if e["reason"] == "InvalidSpec"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"


def test_the_cache_job_gates_the_deployment(harness: Harness) -> None:
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"pv-{harness.namespace}"},
        "spec": {
            "capacity": {"storage": "5Gi"},
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "hostPath": {"path": f"/tmp/{harness.namespace}"},
            "claimRef": {"namespace": harness.namespace, "name": "cached-cache"},
        },
    }
    harness.cluster.kubectl("apply", "-f", "-", input=json.dumps(volume))
    try:
        harness.create(
            "cached", {"model": {"source": SOURCE, "task": "text-classification"}, "cache": {"size": "1Gi"}}
        )
        harness.reconcile("cached")
        assert harness.get("persistentvolumeclaim", "cached-cache") is not None
        (job,) = harness.items("jobs", "modeldeploy.dev/name=cached")
        assert harness.get("deployment", "cached") is None, "no Deployment before the repository is built"
        # Waiting for the controller-manager to bind the claim, or building: either way not a failure.
        assert harness.conditions("cached")["ModelRepositoryReady"][1] in {"CacheClaimPending", "Building"}
        assert harness.status("cached")["phase"] in {"Pending", "Building"}
        wait_until(
            "the build Job to succeed (KWOK completes its pod)",
            lambda: (harness.get("job", job["metadata"]["name"]) or {}).get("status", {}).get("succeeded"),
            timeout=90,
            tolerate=(),
        )
        harness.reconcile("cached")
        deployment = harness.get("deployment", "cached")
        assert deployment is not None
        pod_spec = deployment["spec"]["template"]["spec"]
        assert "initContainers" not in pod_spec
        assert harness.conditions("cached")["ModelRepositoryReady"] == ("True", "Built")
        harness.converge("cached")
    finally:
        harness.cluster.kubectl(
            "delete", "persistentvolume", f"pv-{harness.namespace}", "--wait=false", check=False
        )


def test_turning_autoscaling_on_keeps_the_replica_count(harness: Harness) -> None:
    spec: dict[str, Any] = {"model": {"source": SOURCE, "task": "text-classification"}, "replicas": 3}
    harness.create("handoff", spec)
    harness.reconcile("handoff")
    del spec["replicas"]
    spec["autoscaling"] = {"minReplicas": 2, "maxReplicas": 5}
    harness.create("handoff", spec)
    harness.reconcile("handoff")
    deployment = harness.get("deployment", "handoff")
    assert deployment is not None
    # Without the hand-over, dropping our claim on replicas would have reset it to 1.
    assert deployment["spec"]["replicas"] == 3
    ours = [e for e in deployment["metadata"]["managedFields"] if e["manager"] == FIELD_MANAGER]
    assert "f:replicas" not in json.dumps(ours)
    harness.converge("handoff")  # the hand-over happens once, not on every pass


def test_a_copy_older_than_our_last_status_write_writes_nothing(harness: Harness) -> None:
    """Watches and indices lag behind our own writes: a reconciliation may get a copy of the object from
    before its last status write. It must not write that status (and post its Events) again."""
    harness.create("lagging", {"model": {"source": SOURCE, "task": "text-classification"}})
    harness.reconcile("lagging")  # children, first status
    stale = harness.get("modeldeployment", "lagging")
    assert stale is not None
    harness.kubectl("label", "modeldeployment", "lagging", "team=search")  # someone else's write
    wait_until(
        "Ready", lambda: harness.converge("lagging").ready, tolerate=()
    )  # at least one more status write
    fresh = harness.get("modeldeployment", "lagging")
    assert fresh is not None
    assert int(stale["metadata"]["resourceVersion"]) < int(fresh["metadata"]["resourceVersion"])
    assert stale["status"] != fresh["status"]
    mark = harness.cluster.audit_log.mark()
    outcome = harness.run(harness.reconciler.reconcile(stale))
    assert outcome.writes == 0 and outcome.ready
    time.sleep(1)
    assert harness.cluster.audit_log.writes(user=ADMIN_USER, since=mark) == []


class Counting:
    """The cluster, counting reads by kind."""

    def __init__(self, inner: LightkubeCluster) -> None:
        self.inner = inner
        self.reads: Counter[str] = Counter()

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads[kind.plural] += 1
        return await self.inner.get(kind, namespace, name)

    async def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        self.reads[kind.plural] += 1
        return await self.inner.list(kind, namespace, labels)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Listed:
    """An inventory as the operator's watches would hold it, listed with kubectl when asked."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    def owned_names(self, kind: Kind, owner_uid: str) -> list[str]:
        return [
            obj["metadata"]["name"]
            for obj in self.harness.items(kind.plural, "app.kubernetes.io/managed-by=modeldeploy")
            if is_owned_by(obj, owner_uid)
        ]

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        return [pod_summary(pod) for pod in self.harness.items("pods", selector)]


def test_with_an_inventory_only_wanted_children_are_read_and_unwanted_ones_still_pruned(
    harness: Harness,
) -> None:
    counting = Counting(harness.api)
    reconciler = Reconciler(counting, harness.reconciler.settings, inventory=Listed(harness))

    def reconcile(name: str) -> Outcome:
        body = harness.get("modeldeployment", name)
        assert body is not None
        return harness.run(reconciler.reconcile(body))

    spec: dict[str, Any] = {
        "model": {"source": SOURCE, "task": "text-classification"},
        "autoscaling": {"minReplicas": 2, "maxReplicas": 3},
    }
    harness.create("known", spec)
    reconcile("known")
    counting.reads.clear()
    reconcile("known")
    # What it applies (to compare with what it wants), nothing else: no PVC, Job or pod requests.
    assert set(counting.reads) == {
        "deployments",
        "services",
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
    }

    del spec["autoscaling"]
    spec["replicas"] = 1
    harness.create("known", spec)
    reconcile("known")
    assert harness.get("horizontalpodautoscaler", "known") is None
    assert harness.get("poddisruptionbudget", "known") is None


def test_the_fake_cluster_keeps_its_contract_with_the_api_server(harness: Harness) -> None:
    """The fast tier's FakeCluster against the real apiserver: one scenario (spec changes, a hand edit, the
    replicas hand-off, pruning beside someone else's autoscaler) must leave the same children, send the
    same write requests to them, hand over `replicas` to the same field managers and leave an untouched
    child's resourceVersion alone, on both."""
    real = harness.run(Scenario(harness.api, harness.namespace).run())
    fake = harness.run(Scenario(FakeCluster(), harness.namespace).run())
    assert [step.label for step in real] == [step.label for step in fake]
    for on_real, on_fake in zip(real, fake, strict=True):
        assert on_real == on_fake, on_real.label
