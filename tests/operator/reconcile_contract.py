"""One reconciler scenario, written against the `Cluster` protocol only, so that it runs unchanged on the
in-memory fake (tests/operator/test_reconcile_fast.py asserts its trace) and on the real local control
plane (tests/operator/test_reconcile_cluster.py compares the two traces: the contract that keeps the fake
honest)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modeldeploy.kinds import (
    CHILD_KINDS,
    DEPLOYMENT,
    HORIZONTAL_POD_AUTOSCALER,
    KEDA_CRD,
    MODEL_DEPLOYMENT,
    SCALED_OBJECT,
    SERVICE,
    SERVICE_MONITOR,
    SERVICE_MONITOR_CRD,
    Kind,
)
from modeldeploy.kube import (
    Cluster,
    Objects,
)
from modeldeploy.labels import NAME_LABEL, is_owned_by
from modeldeploy.reconcile import Outcome, Reconciler
from modeldeploy.settings import FIELD_MANAGER, RenderSettings
from modeldeploy_dev.fakecluster import Write

OPTIONAL_CRDS = {SCALED_OBJECT: KEDA_CRD, SERVICE_MONITOR: SERVICE_MONITOR_CRD}
SETTINGS = RenderSettings(triton_image="triton:t", builder_image="builder:t")
SOURCE = "hf://google-bert/bert-base-uncased"
# Another client's field manager (a person with kubectl, a GitOps tool).
SOMEONE = "someone-else"


class Recording:
    """A `Cluster` that records the write requests sent through it (the same record on both backends)."""

    def __init__(self, inner: Cluster) -> None:
        self.inner = inner
        self.writes: list[Write] = []

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.inner.get(kind, namespace, name)

    async def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> Objects:
        return await self.inner.list(kind, namespace, labels)

    async def apply(self, manifest: Mapping[str, Any], field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        metadata = manifest["metadata"]
        self.writes.append(
            Write("apply", str(manifest["kind"]), metadata["namespace"], metadata["name"], field_manager)
        )
        return await self.inner.apply(manifest, field_manager)

    async def delete(self, kind: Kind, namespace: str, name: str) -> None:
        self.writes.append(Write("delete", kind.kind, namespace, name))
        await self.inner.delete(kind, namespace, name)

    async def apply_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> str | None:
        self.writes.append(Write("status", MODEL_DEPLOYMENT.kind, namespace, name))
        return await self.inner.apply_status(namespace, name, status)

    async def create_event(self, event: Mapping[str, Any]) -> None:
        self.writes.append(
            Write("create", "Event", event["metadata"]["namespace"], event["metadata"]["name"])
        )
        await self.inner.create_event(event)

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> bool:
        self.writes.append(Write("patch", "Event", namespace, name))
        return await self.inner.patch_event(namespace, name, patch)

    async def events_for(self, namespace: str, kind: str, name: str) -> Objects:
        return await self.inner.events_for(namespace, kind, name)

    async def nodes(self) -> Objects:
        return await self.inner.nodes()

    async def crd_exists(self, name: str) -> bool:
        return await self.inner.crd_exists(name)

    async def container_log(self, namespace: str, pod: str, container: str, tail_lines: int) -> str:
        return await self.inner.container_log(namespace, pod, container, tail_lines)


def managers_of_replicas(deployment: Mapping[str, Any]) -> list[str]:
    """The field managers that own a Deployment's `spec.replicas`, read from its managedFields."""
    return sorted(
        entry["manager"]
        for entry in deployment["metadata"].get("managedFields") or []
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
    )


@dataclass
class Step:
    """What one reconciliation did and left, in terms both backends can show alike."""

    label: str
    # The write requests to children (status and Events depend on what controllers report, which the
    # fake does not run).
    child_writes: list[tuple[str, str, str, str]]
    children: list[tuple[str, str]]
    replicas: int | None
    replicas_managers: list[str]
    image: str | None
    service_version_changed: bool
    foreign_kept: bool


@dataclass
class Scenario:
    """Creates a ModelDeployment and reconciles it through spec changes, hand edits and a hand-over."""

    cluster: Cluster
    namespace: str
    name: str = "contract"
    steps: list[Step] = field(default_factory=list)

    async def _set_spec(self, spec: dict[str, Any]) -> None:
        manifest = {
            "apiVersion": MODEL_DEPLOYMENT.api_version,
            "kind": MODEL_DEPLOYMENT.kind,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        await self.cluster.apply(manifest, field_manager=SOMEONE)

    async def _reconcile(
        self, reconciler: Reconciler, recording: Recording, label: str, service_rv: str
    ) -> str:
        body = await self.cluster.get(MODEL_DEPLOYMENT, self.namespace, self.name)
        assert body is not None
        before = len(recording.writes)
        outcome: Outcome = await reconciler.reconcile(body)
        sent = recording.writes[before:]
        assert outcome.writes == len(sent), (label, outcome.writes, sent)
        children: list[tuple[str, str]] = []
        for kind in CHILD_KINDS:
            if kind in OPTIONAL_CRDS and not await self.cluster.crd_exists(OPTIONAL_CRDS[kind]):
                continue  # not installed: the API server does not know the kind
            for obj in await self.cluster.list(kind, self.namespace, {NAME_LABEL: self.name}):
                if is_owned_by(obj, body["metadata"]["uid"]):
                    children.append((kind.kind, obj["metadata"]["name"]))
        deployment = await self.cluster.get(DEPLOYMENT, self.namespace, self.name) or {}
        service = await self.cluster.get(SERVICE, self.namespace, self.name) or {"metadata": {}}
        containers = (
            ((deployment.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers", [])
        )
        version = str(service["metadata"].get("resourceVersion"))
        self.steps.append(
            Step(
                label=label,
                child_writes=sorted(
                    (w.verb, w.kind, w.name, w.manager)
                    for w in sent
                    if w.kind not in {"ModelDeployment", "Event"}
                ),
                children=sorted(children),
                replicas=(deployment.get("spec") or {}).get("replicas"),
                replicas_managers=managers_of_replicas(deployment) if deployment else [],
                image=containers[0]["image"] if containers else None,
                service_version_changed=version != service_rv,
                foreign_kept=await self.cluster.get(HORIZONTAL_POD_AUTOSCALER, self.namespace, SOMEONE)
                is not None,
            )
        )
        return version

    async def run(self) -> list[Step]:
        recording = Recording(self.cluster)
        reconciler = Reconciler(recording, SETTINGS)
        model = {"source": SOURCE, "task": "text-classification"}
        await self._set_spec({"model": model, "replicas": 3})
        rv = await self._reconcile(reconciler, recording, "created", "")
        rv = await self._reconcile(reconciler, recording, "at rest", rv)
        # A hand edit of a field we set, by another manager: we take it back.
        edit = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {"template": {"spec": {"containers": [{"name": "triton", "image": "evil:1"}]}}},
        }
        await self.cluster.apply(edit, field_manager=SOMEONE)
        rv = await self._reconcile(reconciler, recording, "hand edit restored", rv)
        # Someone else's autoscaler in the namespace is none of our business. (It scales a Deployment of
        # theirs: one that scaled ours would race the hand-off on the real cluster, where it runs.)
        foreign = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": SOMEONE, "namespace": self.namespace},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": SOMEONE},
                "maxReplicas": 2,
            },
        }
        await self.cluster.apply(foreign, field_manager=SOMEONE)
        await self._set_spec({"model": model, "autoscaling": {"minReplicas": 2, "maxReplicas": 5}})
        rv = await self._reconcile(reconciler, recording, "autoscaler takes over", rv)
        rv = await self._reconcile(reconciler, recording, "autoscaled at rest", rv)
        await self._set_spec({"model": model, "replicas": 1})
        rv = await self._reconcile(reconciler, recording, "autoscaling off", rv)
        await self._reconcile(reconciler, recording, "fixed at rest", rv)
        return self.steps
