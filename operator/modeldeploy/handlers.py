"""kopf wiring: thin handlers that route every trigger to the one `reconcile()`.

Why this shape (a no-op resync must cost zero write requests):

* ModelDeployments: `on.resume` / `on.create` / `on.update` share one handler. kopf writes its progress and
  last-handled-configuration annotations (under `modeldeploy.dev/`) only when the spec actually changed,
  gives us retries with backoff (`TemporaryError`) and stops on `PermanentError`; status patches don't
  count as changes. kopf timers and daemons are deliberately not used: kopf adds a finalizer to every
  object that has one, and the operator must not block deletion (children go by garbage collection).
* The periodic resync is our own loop over a kopf index of ModelDeployments, calling the same
  reconcile; on a converged cluster that reads, compares and writes nothing.
* Children: `on.event` handlers (which never write) on every kind we own, filtered server-side by our
  managed-by label, find their owner in the index and reconcile it — drift, deletion and readiness are
  all noticed within a watch event, level-based.
* kopf's own per-handler Events are off; the reconciler posts one Event per condition transition.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from modeldeploy.api import GROUP, KIND, PLURAL, VERSION
from modeldeploy.kube import LightkubeCluster
from modeldeploy.labels import MANAGED_BY, MANAGED_BY_VALUE, NAME_LABEL
from modeldeploy.metrics import Metrics
from modeldeploy.names import label_value
from modeldeploy.queue import TRANSIENT_RETRY_SECONDS, ReconcileQueue
from modeldeploy.reconcile import Reconciler
from modeldeploy.settings import ANNOTATION_PREFIX, FIELD_MANAGER, RenderSettings

logger = logging.getLogger(__name__)

MANAGED = {MANAGED_BY: MANAGED_BY_VALUE}
MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGED_BY_VALUE}"
# (group, version, plural) of everything we own, plus pods (a builder init container's failure shows
# only on the pod).
OWNED_RESOURCES = (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("", "v1", "persistentvolumeclaims"),
    ("batch", "v1", "jobs"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("keda.sh", "v1alpha1", "scaledobjects"),
    ("monitoring.coreos.com", "v1", "servicemonitors"),
)
POD_RESOURCE = ("", "v1", "pods")


@dataclass
class OperatorConfig:
    render: RenderSettings = field(default_factory=RenderSettings)
    resync_seconds: float = 120.0
    resync_concurrency: int = 4


class Runtime:
    """State shared by the handlers of one operator process (created in the startup handler)."""

    def __init__(self, config: OperatorConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.cluster: LightkubeCluster | None = None
        self.reconciler: Reconciler | None = None
        self.queue: ReconcileQueue | None = None
        self.index: Mapping[str, Any] | None = None
        self.resync_task: asyncio.Task[None] | None = None

    def latest(self, uid: str) -> Mapping[str, Any] | None:
        if self.index is None:
            return None
        for body in self.index.get(uid, ()):
            return dict(body)
        return None

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
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": copy.deepcopy(dict(body.metadata)),
        "spec": copy.deepcopy(dict(body.spec)),
        "status": copy.deepcopy(dict(body.status)),
    }


def owner_uid(body: Mapping[str, Any]) -> str | None:
    for reference in (body.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("kind") == KIND and str(reference.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return str(reference["uid"])
    return None


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings for a quiet steady state (see the module docstring)."""
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
    async def start(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        configure(settings)
        runtime.cluster = LightkubeCluster.from_env()
        runtime.reconciler = Reconciler(runtime.cluster, config.render, metrics)
        runtime.queue = ReconcileQueue(runtime.reconciler.reconcile, runtime.latest, metrics)
        # The index object is filled as kopf lists and watches; we keep a handle for the resync loop.
        runtime.index = kwargs["modeldeployments"]
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
    @kopf.index(GROUP, VERSION, PLURAL, registry=registry, id="modeldeployments")
    def modeldeployments(uid: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
        return {uid: _snapshot(body)}

    @kopf.index(GROUP, VERSION, PLURAL, registry=registry, id="modeldeployments_by_label")
    def modeldeployments_by_label(
        namespace: str | None, name: str, uid: str, **_: Any
    ) -> dict[tuple[str | None, str], str]:
        return {(namespace, label_value(name)): uid}

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="reconcile")
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="reconcile")
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, id="reconcile")
    async def reconcile_modeldeployment(uid: str, reason: str, **_: Any) -> None:
        trigger = str(getattr(reason, "value", reason))  # kopf passes a str-valued Reason enum
        try:
            outcome = await runtime.require_queue().request(uid, trigger, retry_transient=False)
        except Exception as exc:
            if getattr(exc, "transient", False):
                raise kopf.TemporaryError(str(exc), delay=TRANSIENT_RETRY_SECONDS) from exc
            raise
        if outcome is not None and outcome.invalid_spec:
            # Reported in the status and an Event already; retrying cannot fix the spec.
            raise kopf.PermanentError(outcome.message)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def forget_deleted(event: Mapping[str, Any], uid: str, **_: Any) -> None:
        if event.get("type") == "DELETED":
            if runtime.queue is not None:
                runtime.queue.forget(uid)
            if runtime.reconciler is not None:
                runtime.reconciler.forget(uid)

    async def reconcile_owner(uid: str | None, trigger: str) -> None:
        if uid is None or runtime.queue is None:
            return
        with contextlib.suppress(Exception):  # logged by the queue, which also schedules the retry
            await runtime.queue.request(uid, trigger)

    def register_child(group: str, version: str, plural: str) -> None:
        @kopf.on.event(group, version, plural, labels=MANAGED, registry=registry, id=f"owner-of-{plural}")
        async def child_changed(body: kopf.Body, **_: Any) -> None:
            await reconcile_owner(owner_uid(body), plural)

    for group, version, plural in OWNED_RESOURCES:
        register_child(group, version, plural)

    @kopf.on.event(*POD_RESOURCE, labels=MANAGED, registry=registry, id="owner-of-pods")
    async def pod_changed(namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
        owners: Mapping[Any, Any] = kwargs["modeldeployments_by_label"]
        for uid in owners.get((namespace, labels.get(NAME_LABEL)), ()):
            await reconcile_owner(str(uid), "pods")

    return registry, runtime
