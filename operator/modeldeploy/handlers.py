"""kopf wiring: thin handlers that route every trigger to the one `reconcile()`.

Why this shape (a no-op resync must cost zero write requests, and 500 ModelDeployments applied at once
must not cost 500 reconciliations in flight at once):

* Every handler is an `on.event` handler (which never writes) that hands the ModelDeployment concerned
  to the `ReconcileQueue` and returns at once; the queue runs a few reconciliations at a time and merges
  the requests that pile up meanwhile. kopf therefore writes nothing to our objects: no
  progress/last-handled-configuration annotations, no finalizers (the operator must not block deletion;
  children go by garbage collection), no per-handler Events.
* ModelDeployments: an event is reconciled unless the last successful reconciliation already saw that
  `metadata.generation` (spec changes bump it; our own status writes, which are most of the events, do
  not). Transient failures and crashes are retried by the queue with a delay; a spec that cannot work
  gets its status and Event once and is not retried.
* The periodic resync is our own loop over a kopf index of ModelDeployments, calling the same
  reconcile; on a converged cluster that reads two objects per ModelDeployment and writes nothing.
* Children: `on.event` handlers on every kind we own, filtered server-side by our managed-by label,
  find their owner and reconcile it: drift, deletion and readiness are all noticed within a watch
  event, level-based. The same watches fill indices that the reconciler reads instead of the API
  server (`Runtime` is its `Inventory`): which PVCs, Jobs, HPAs and PDBs each ModelDeployment owns, and
  a summary of each pod (its conditions, container states and memory limits: what the failure
  taxonomy of the status reads).
* Index and handler functions are `async`: kopf runs plain functions in a thread pool, and every thread
  that allocates gets its own malloc arena, whose freed memory the process rarely gives back.
* The reconciler posts one Event per change of Ready (a Warning for a failure, aggregated when it
  repeats); refused children and unbound cache claims are looked at again on the queue's retry path
  (`Outcome.retry_after`), not left to the resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from modeldeploy import kinds
from modeldeploy.kinds import MODEL_DEPLOYMENT, Kind
from modeldeploy.kube import LightkubeCluster
from modeldeploy.labels import COMPONENT, MANAGED_BY, MANAGED_BY_VALUE, NAME_LABEL
from modeldeploy.metrics import Metrics
from modeldeploy.names import label_value
from modeldeploy.observations import pod_summary
from modeldeploy.queue import DEFAULT_CONCURRENCY, ReconcileQueue
from modeldeploy.reconcile import Reconciler
from modeldeploy.settings import ANNOTATION_PREFIX, FIELD_MANAGER, RenderSettings

logger = logging.getLogger(__name__)

MANAGED = {MANAGED_BY: MANAGED_BY_VALUE}
MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGED_BY_VALUE}"


def _resource(kind: Kind) -> tuple[str, str, str]:
    """How kopf names a resource: (group, version, plural)."""
    return kind.group, kind.version, kind.plural


# Everything we own, plus pods (a builder init container's failure shows only on the pod).
OWNED_RESOURCES = tuple(_resource(kind) for kind in kinds.CHILD_KINDS)
POD_RESOURCE = _resource(kinds.POD)
MODEL_DEPLOYMENTS = _resource(MODEL_DEPLOYMENT)
# Children that a ModelDeployment usually does not have (the reconciler only deletes them, when it owns
# one): kept in an index of (owner uid -> names), so that checking for them costs no request. The
# optional CRDs' kinds are not among them: kopf watches those only when their CRD exists.
INVENTORIED_KINDS = (
    kinds.PERSISTENT_VOLUME_CLAIM,
    kinds.JOB,
    kinds.HORIZONTAL_POD_AUTOSCALER,
    kinds.POD_DISRUPTION_BUDGET,
    kinds.NETWORK_POLICY,
)


@dataclass
class OperatorConfig:
    render: RenderSettings = field(default_factory=RenderSettings)
    resync_seconds: float = 120.0
    resync_concurrency: int = 4
    concurrency: int = DEFAULT_CONCURRENCY


class Runtime:
    """State shared by the handlers of one operator process (its clients are created in the startup
    handler)."""

    def __init__(self, config: OperatorConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.cluster: LightkubeCluster | None = None
        self.reconciler: Reconciler | None = None
        self.queue: ReconcileQueue | None = None
        self.index: Mapping[str, Any] | None = None
        # kopf indices (filled as kopf lists and watches): plural -> {owner uid: names}; and our pods.
        self.owned: dict[str, Mapping[str, Any]] = {}
        self.pod_index: Mapping[Any, Any] | None = None
        self.resync_task: asyncio.Task[None] | None = None

    def latest(self, uid: str) -> Mapping[str, Any] | None:
        if self.index is None:
            return None
        for body in self.index.get(uid, ()):
            return dict(body)
        return None

    # Inventory (see reconcile.Inventory): what the watches know, instead of reading it again.

    def owned_names(self, kind: Kind, owner_uid: str) -> Collection[str] | None:
        index = self.owned.get(kind.plural)
        return None if index is None else frozenset(str(name) for name in index.get(owner_uid, ()))

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]] | None:
        if self.pod_index is None:
            return None
        key = (namespace, labels.get(NAME_LABEL), labels.get(COMPONENT))
        return [dict(pod) for pod in self.pod_index.get(key, ())]

    def require_queue(self) -> ReconcileQueue:
        if self.queue is None:
            raise kopf.TemporaryError("the operator is still starting", delay=1)
        return self.queue

    async def resync_forever(self) -> None:
        """Reconcile every known ModelDeployment once per resync period."""
        limit = asyncio.Semaphore(self.config.resync_concurrency)
        queue = self.require_queue()

        async def one(uid: str) -> None:
            async with limit:
                with contextlib.suppress(Exception):  # logged by the queue; the next round retries
                    await queue.request(uid, "resync")

        while True:
            await asyncio.sleep(self.config.resync_seconds)
            uids = list(self.index or ())
            self.metrics.managed.set(len(uids))
            await asyncio.gather(*(one(uid) for uid in uids))


def _snapshot(body: kopf.Body) -> dict[str, Any]:
    # managedFields are most of a ModelDeployment's metadata, and nothing here reads them.
    metadata = {key: value for key, value in body.metadata.items() if key != "managedFields"}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": copy.deepcopy(metadata),
        "spec": copy.deepcopy(dict(body.spec)),
        "status": copy.deepcopy(dict(body.status)),
    }


def _owned_index_id(kind: Kind) -> str:
    return f"owned_{kind.plural}"


def owner_uid(body: Mapping[str, Any]) -> str | None:
    for reference in (body.get("metadata") or {}).get("ownerReferences") or []:
        group = str(reference.get("apiVersion", "")).rpartition("/")[0]
        if (reference.get("kind"), group) == (MODEL_DEPLOYMENT.kind, MODEL_DEPLOYMENT.group):
            return str(reference["uid"])
    return None


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings for a quiet steady state (see the module docstring); the caller passes them to
    `kopf.operator` with the registry, so they hold from the first request on."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Never added (no deletion handlers, daemons or timers); named anyway so nothing says "kopf.zalando.org".
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    settings.posting.enabled = False
    settings.posting.reporting_component = FIELD_MANAGER
    for resource in (*OWNED_RESOURCES, POD_RESOURCE):
        settings.watching.label_selectors[resource] = MANAGED_SELECTOR


def build_registry(config: OperatorConfig, metrics: Metrics) -> tuple[kopf.OperatorRegistry, Runtime]:
    registry = kopf.OperatorRegistry()
    runtime = Runtime(config, metrics)

    @kopf.on.startup(registry=registry)
    async def start(**kwargs: Any) -> None:
        runtime.cluster = LightkubeCluster.from_env()
        runtime.reconciler = Reconciler(runtime.cluster, config.render, metrics, inventory=runtime)
        runtime.queue = ReconcileQueue(
            runtime.reconciler.reconcile, runtime.latest, metrics, concurrency=config.concurrency
        )
        # The index objects are filled as kopf lists and watches; we keep handles to them.
        runtime.index = kwargs["modeldeployments"]
        runtime.owned = {kind.plural: kwargs[_owned_index_id(kind)] for kind in INVENTORIED_KINDS}
        runtime.pod_index = kwargs["pods"]
        runtime.resync_task = asyncio.get_running_loop().create_task(runtime.resync_forever())

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The order lightkube uses too: the in-cluster account, else $KUBECONFIG or ~/.kube/config.
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(
            **kwargs
        ) or kopf.login_with_kubeconfig(**kwargs)
        return info

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        if runtime.resync_task is not None:
            runtime.resync_task.cancel()
        if runtime.queue is not None:
            runtime.queue.cancel_all()
        if runtime.cluster is not None:
            await runtime.cluster.close()

    # Explicit ids: an index reaches handlers as a keyword argument of this name.
    @kopf.index(*MODEL_DEPLOYMENTS, registry=registry, id="modeldeployments")
    async def modeldeployments(uid: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
        return {uid: _snapshot(body)}

    @kopf.index(*MODEL_DEPLOYMENTS, registry=registry, id="modeldeployments_by_label")
    async def modeldeployments_by_label(
        namespace: str | None, name: str, uid: str, **_: Any
    ) -> dict[tuple[str | None, str], str]:
        return {(namespace, label_value(name)): uid}

    def register_inventory(kind: Kind) -> None:
        @kopf.index(*_resource(kind), labels=MANAGED, registry=registry, id=_owned_index_id(kind))
        async def owned(name: str, body: kopf.Body, **_: Any) -> dict[str, str] | None:
            owner = owner_uid(body)
            return {owner: name} if owner is not None else None

    for kind in INVENTORIED_KINDS:
        register_inventory(kind)

    @kopf.index(*POD_RESOURCE, labels=MANAGED, registry=registry, id="pods")
    async def pods(
        namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
    ) -> dict[tuple[str | None, str | None, str | None], dict[str, Any]]:
        return {(namespace, labels.get(NAME_LABEL), labels.get(COMPONENT)): pod_summary(body)}

    @kopf.on.event(*MODEL_DEPLOYMENTS, registry=registry, id="reconcile")
    async def modeldeployment_changed(
        event: Mapping[str, Any], uid: str, meta: Mapping[str, Any], **_: Any
    ) -> None:
        if event.get("type") == "DELETED":
            if runtime.queue is not None:
                runtime.queue.forget(uid)
            if runtime.reconciler is not None:
                runtime.reconciler.forget(uid)
            return
        # A type of None: listed at start-up (what kopf calls resuming); ADDED; MODIFIED.
        trigger = {None: "resume", "ADDED": "create"}.get(event.get("type"), "update")
        if runtime.queue is not None:  # set by the start-up handler, which kopf runs before any watch
            runtime.queue.notify_if_changed(uid, meta.get("generation"), trigger)

    def reconcile_owner(uid: str | None, trigger: str) -> None:
        if uid is not None and runtime.queue is not None:
            runtime.queue.notify(uid, trigger)

    def register_child(group: str, version: str, plural: str) -> None:
        @kopf.on.event(group, version, plural, labels=MANAGED, registry=registry, id=f"owner-of-{plural}")
        async def child_changed(body: kopf.Body, **_: Any) -> None:
            reconcile_owner(owner_uid(body), plural)

    for group, version, plural in OWNED_RESOURCES:
        register_child(group, version, plural)

    @kopf.on.event(*POD_RESOURCE, labels=MANAGED, registry=registry, id="owner-of-pods")
    async def pod_changed(namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
        owners: Mapping[Any, Any] = kwargs["modeldeployments_by_label"]
        for uid in owners.get((namespace, labels.get(NAME_LABEL)), ()):
            reconcile_owner(str(uid), "pods")

    # Shared servers (docs/packing.md): their own handlers, on the same runtime.
    from modeldeploy.server_handlers import register_servers

    register_servers(registry, runtime)
    return registry, runtime
