"""Reconciliation: make a ModelDeployment's children match its spec, then report what they say.

One `reconcile()` serves every trigger (create, update, resume, a child's watch event, the periodic
resync). It is an ordered list of small idempotent `ensure_*` steps; each reads the live object, applies
the desired manifest with server-side apply (field manager `modeldeploy`, force) only when the live object
does not already say everything the manifest says, and prunes the children this ModelDeployment owns but
no longer wants. The status is written only when it changed, and an Event is posted per change of Ready
(a repeat of a recent one bumps that Event's count instead; publish.py) — so a converged cluster sees no
write requests at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Protocol, TypeVar

from model_repo.options import needs_gate
from modeldeploy.api import AutoscalingEngine, SpecError
from modeldeploy.calibration import calibration_sha256
from modeldeploy.checks import parse_for_reconcile
from modeldeploy.compare import is_subset
from modeldeploy.kinds import (
    DEPLOYMENT,
    HORIZONTAL_POD_AUTOSCALER,
    HTTP_ROUTE_CRD,
    JOB,
    KEDA_CRD,
    NETWORK_POLICY,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    POD_DISRUPTION_BUDGET,
    SCALED_OBJECT,
    SERVICE_MONITOR_CRD,
    Kind,
    kind_of,
)
from modeldeploy.kube import Cluster, KubeError
from modeldeploy.labels import (
    APPLIED_HASH_ANNOTATION,
    COMPONENT,
    MODEL_BUILDER,
    MODEL_DIGEST_ANNOTATION,
    NAME_LABEL,
    is_owned_by,
    selector_labels,
)
from modeldeploy.manifests import Manifest, desired_state
from modeldeploy.metrics import Metrics
from modeldeploy.names import label_value
from modeldeploy.observations import (
    Observed,
    deployed_digest,
    job_outcome,
    node_summary,
    pod_digest,
    pod_summary,
    running_builders,
)
from modeldeploy.progress_reader import PROGRESS_POLL_SECONDS, BuildProgressReader
from modeldeploy.publish import StatusPublisher
from modeldeploy.rollout_steps import (
    MetricsSources,
    ensure_canary,
    plan_rollout,
    rollout_status,
    separate_canary_pods,
)
from modeldeploy.round import Outcome as Outcome
from modeldeploy.round import Round
from modeldeploy.settings import FIELD_MANAGER, REPLICAS_HANDOFF_MANAGER, ClusterCapabilities, RenderSettings
from modeldeploy.status import (
    compute_status,
    invalid_spec_status,
    now_rfc3339,
)

logger = logging.getLogger(__name__)

CAPABILITIES_TTL_SECONDS = 60.0
# Set by the Job controller on its pods.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
# After the API server refused a child (RBAC, admission webhook, immutable field): retry, but slowly.
REFUSED_RETRY_SECONDS = 30.0
# While the cache claim is unbound: what explains it are Events, which do not trigger a reconciliation.
UNBOUND_CLAIM_RETRY_SECONDS = 10.0


_T = TypeVar("_T")


class _Refused:
    """What `Reconciler._write` returns when the API server refused the request."""


_REFUSED = _Refused()


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def with_applied_hash(manifest: Manifest) -> Manifest:
    """The manifest, annotated with its own hash (see APPLIED_HASH_ANNOTATION)."""
    stamped: Manifest = json.loads(json.dumps(manifest))
    annotations = stamped["metadata"].setdefault("annotations", {})
    annotations[APPLIED_HASH_ANNOTATION] = manifest_hash(manifest)
    return stamped


def _applies_replicas(live: Mapping[str, Any]) -> bool:
    """Whether our own server-side apply currently sets the Deployment's `spec.replicas`."""
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply":
            spec = ((entry.get("fieldsV1") or {}).get("f:spec")) or {}
            return "f:replicas" in spec
    return False


def up_to_date(stamped: Manifest, live: Mapping[str, Any]) -> bool:
    """Applying `stamped` over `live` would change nothing we care about.

    The hash catches manifests that changed by dropping a field (a subset check can't); the subset check
    catches hand edits and deletions of fields we set (the hash, being ours, can't).
    """
    live_annotations = (live.get("metadata") or {}).get("annotations") or {}
    ours = stamped["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
    return bool(live_annotations.get(APPLIED_HASH_ANNOTATION) == ours and is_subset(stamped, live))


class Inventory(Protocol):
    """What the operator's watches already know about the children, so that a reconciliation need not
    ask the API server again. `None` from either method: not known here, ask the API server."""

    def owned_names(self, kind: Kind, owner_uid: str) -> Collection[str] | None:
        """Names of the objects of `kind` owned by `owner_uid` (and carrying our managed-by label)."""
        ...

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]] | None:
        """Our pods in `namespace` with these labels, as much of them as the status reads."""
        ...


class Reconciler:
    def __init__(
        self,
        cluster: Cluster,
        settings: RenderSettings,
        metrics: Metrics | None = None,
        capabilities_ttl: float = CAPABILITIES_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        inventory: Inventory | None = None,
        metrics_sources: MetricsSources | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cluster
        # Prometheus query APIs of the canary analyses, and the clock of the times status.rollout keeps.
        self.metrics_sources = metrics_sources or MetricsSources()
        self.wall_clock = wall_clock
        # Without one, every child is read from the API server (as in tests that drive reconcile() alone).
        self.inventory = inventory
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._capabilities_ttl = capabilities_ttl
        self._clock = clock
        self._capabilities: tuple[float, ClusterCapabilities] | None = None
        self._nodes: tuple[float, list[dict[str, Any]] | None] | None = None
        self._progress = BuildProgressReader(cluster, clock)
        self.publisher = StatusPublisher(cluster, self.metrics, clock)
        self.steps: list[Callable[[Round], Awaitable[None]]] = [
            self.ensure_cache_claim,
            self.ensure_build_job,
            self.plan_rollout,
            self.ensure_deployment,
            self.ensure_canary,
            self.ensure_service,
            self.ensure_autoscaler,
            self.ensure_pod_disruption_budget,
            self.ensure_service_monitor,
            self.ensure_network_policy,
            self.prune_build_jobs,
            self.observe_pods,
            self.observe_build_progress,
            self.separate_canary_pods,
            self.observe_nodes,
        ]

    # ------------------------------------------------------------------------------------ entry point

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        metadata = body.get("metadata") or {}
        if metadata.get("deletionTimestamp"):
            # Being deleted: the garbage collector takes the children; nothing to converge to.
            return Outcome(message="being deleted")
        uid = str(metadata["uid"])
        previous = self.publisher.previous(body)
        try:
            md = parse_for_reconcile(dict(body))
        except SpecError as exc:
            status = invalid_spec_status(previous, metadata.get("generation"), exc.messages, now_rfc3339())
            writes = await self.publisher.publish(body, previous, status)
            return Outcome(invalid_spec=exc.messages, writes=writes, message=str(exc))
        if md.spec.server is not None:  # loaded into a shared ModelServer: no Deployment of its own
            from modeldeploy.placed import reconcile_placed

            return await reconcile_placed(self, body, md, previous)
        capabilities = await self.capabilities()
        desired = desired_state(md, self.settings, capabilities, await calibration_sha256(self.cluster, md))
        current = Round(
            md=md,
            uid=uid,
            desired=desired,
            capabilities=capabilities,
            observed=Observed(digest=desired.digest, keda_installed=capabilities.keda),
            previous=previous,
        )
        for step in self.steps:
            await step(current)
        current.observed.apply_errors = list(current.refused)
        now = now_rfc3339()
        status = rollout_status(
            compute_status(md, current.observed, previous, now), current.rollout, previous, now
        )
        current.writes += await self.publisher.publish(body, previous, status)
        if current.rollout is not None:
            current.writes += await self.publisher.post_rollout_events(body, current.rollout.events)
        ready_condition = next(c for c in status.conditions or [] if c.type == "Ready")
        return Outcome(
            writes=current.writes,
            ready=ready_condition.status.value == "True",
            retry_after=self._retry_after(current),
            message=ready_condition.message,
        )

    @staticmethod
    def _retry_after(current: Round) -> float | None:
        """When to look again although no watch event will say so (the queue schedules it)."""
        waits = []
        if current.refused:
            waits.append(REFUSED_RETRY_SECONDS)
        claim = current.observed.cache_claim
        if claim is not None and (claim.get("status") or {}).get("phase") != "Bound":
            waits.append(UNBOUND_CLAIM_RETRY_SECONDS)
        if current.building:
            waits.append(PROGRESS_POLL_SECONDS)
        if current.rollout is not None and current.rollout.retry_after is not None:
            # A canary's hold ends or its next analysis is due: no watch event will say so.
            waits.append(current.rollout.retry_after)
        return min(waits, default=None)

    def forget(self, uid: str) -> None:
        """Drop what we remember about a deleted ModelDeployment."""
        self.publisher.forget(uid)
        self._progress.forget(uid)

    async def nodes(self) -> list[dict[str, Any]] | None:
        """The nodes' GPU products and allocatable GPUs (cached like the capabilities; None if the
        operator may not list nodes, in which case only the scheduler's word is reported)."""
        now = self._clock()
        if self._nodes is not None and now - self._nodes[0] < self._capabilities_ttl:
            return self._nodes[1]
        try:
            found: list[dict[str, Any]] | None = [node_summary(node) for node in await self.cluster.nodes()]
        except KubeError as exc:
            if exc.transient:
                raise
            logger.warning("cannot list nodes (%s); placement is reported from the scheduler only", exc)
            found = None
        self._nodes = (now, found)
        return found

    # ------------------------------------------------------------------------------------ capabilities

    async def capabilities(self) -> ClusterCapabilities:
        """Which optional CRDs exist (cached for a minute: they are installed rarely)."""
        now = self._clock()
        if self._capabilities is not None and now - self._capabilities[0] < self._capabilities_ttl:
            return self._capabilities[1]
        found = ClusterCapabilities(
            service_monitors=await self._crd_exists(SERVICE_MONITOR_CRD),
            keda=await self._crd_exists(KEDA_CRD),
            gateway_api=await self._crd_exists(HTTP_ROUTE_CRD),
        )
        self._capabilities = (now, found)
        return found

    async def _crd_exists(self, name: str) -> bool:
        try:
            return await self.cluster.crd_exists(name)
        except KubeError as exc:
            if exc.transient:
                raise
            logger.warning("cannot tell whether CRD %s exists (%s); assuming it does not", name, exc)
            return False

    # ------------------------------------------------------------------------------------ primitives

    async def _apply_if_needed(self, current: Round, manifest: Manifest) -> dict[str, Any] | None:
        """The live object after making it match `manifest`. If the API server refused the apply (noted
        in `current.refused`), the live object as it is, None if there is none; None also when an object
        of that name exists that this ModelDeployment does not own (never overwritten; noted too)."""
        kind = kind_of(manifest)
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        live = await self.cluster.get(kind, namespace, name)
        if live is not None and not is_owned_by(live, current.uid):
            current.refused.append(self._foreign_object_message(kind, name, live))
            return None
        stamped = with_applied_hash(manifest)
        if live is not None and up_to_date(stamped, live):
            return live
        applied = await self._write(current, kind, "apply", self.cluster.apply(stamped))
        if isinstance(applied, _Refused):
            return live
        logger.info("%s %s/%s applied", kind, namespace, name)
        return applied

    async def _write(self, current: Round, kind: Kind, verb: str, request: Awaitable[_T]) -> _T | _Refused:
        """Send one write request and count it. A refusal that retrying soon will not cure (RBAC, an
        admission webhook, an immutable field) goes to `current.refused` (the status reports it, the queue
        retries slowly); a transient failure raises."""
        try:
            result = await request
        except KubeError as exc:
            if exc.transient:
                raise
            current.refused.append(str(exc))
            return _REFUSED
        current.writes += 1
        self.metrics.writes.labels(kind=kind.kind, verb=verb).inc()
        return result

    @staticmethod
    def _foreign_object_message(kind: Kind, name: str, live: Mapping[str, Any]) -> str:
        references = (live.get("metadata") or {}).get("ownerReferences") or []
        if any(reference.get("controller") for reference in references):
            # Usually the children of a deleted ModelDeployment of the same name, not collected yet.
            return f"{kind} {name} belongs to another owner; waiting for it to be garbage-collected"
        return f"{kind} {name} already exists and is not managed by this ModelDeployment; delete or rename it"

    def _owned_names(self, kind: Kind, uid: str) -> Collection[str] | None:
        return self.inventory.owned_names(kind, uid) if self.inventory is not None else None

    async def _prune(self, current: Round, kind: Kind, name: str) -> None:
        """Delete the named object if, and only if, this ModelDeployment owns it."""
        owned = self._owned_names(kind, current.uid)
        if owned is not None and name not in owned:
            # The watch has seen no such object of ours (if one appears, its event reconciles us again).
            return
        namespace = current.md.metadata.namespace
        live = await self.cluster.get(kind, namespace, name)
        if live is None or not is_owned_by(live, current.uid):
            return
        await self._delete(current, kind, name)

    async def _delete(self, current: Round, kind: Kind, name: str) -> None:
        namespace = current.md.metadata.namespace
        deleted = await self._write(current, kind, "delete", self.cluster.delete(kind, namespace, name))
        if not isinstance(deleted, _Refused):
            logger.info("%s %s/%s deleted (no longer wanted)", kind, namespace, name)

    # ------------------------------------------------------------------------------------ steps

    async def ensure_cache_claim(self, current: Round) -> None:
        manifest = current.desired.cache_claim
        names = current.desired.owner.names
        if manifest is not None:
            current.observed.cache_claim = await self._apply_if_needed(current, manifest)
        else:
            await self._prune(current, PERSISTENT_VOLUME_CLAIM, names.cache_claim)
            cache = current.md.spec.cache
            if cache is not None and cache.claim_name:
                current.observed.cache_claim = await self.cluster.get(
                    PERSISTENT_VOLUME_CLAIM, current.md.metadata.namespace, cache.claim_name
                )
        claim = current.observed.cache_claim
        if claim is not None and (claim.get("status") or {}).get("phase") != "Bound":
            # Only the claim's Events say why it is unbound (no such StorageClass, no volume fits).
            try:
                events = await self.cluster.events_for(
                    current.md.metadata.namespace, PERSISTENT_VOLUME_CLAIM.kind, claim["metadata"]["name"]
                )
            except KubeError as exc:
                if exc.transient:
                    raise
                # A role without `list` on events (an older chart): the status says "not bound yet" only.
                logger.warning("cannot read the Events of claim %s: %s", claim["metadata"]["name"], exc)
                events = []
            current.observed.claim_events = [event for event in events if event.get("type") == "Warning"]

    async def ensure_build_job(self, current: Round) -> None:
        manifest = current.desired.build_job
        if manifest is None:
            return
        live = await self.cluster.get(JOB, manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        if live is not None and is_owned_by(live, current.uid):
            # A Job's pod template is immutable, and its name is the digest: once it exists, it is the
            # build of exactly this repository, finished or not.
            current.observed.build_job = live
            return
        current.observed.build_job = await self._apply_if_needed(current, manifest)

    async def ensure_deployment(self, current: Round) -> None:
        manifest = current.desired.deployment
        if current.md.spec.cache is not None:
            outcome, _ = job_outcome(current.observed.build_job)
            if outcome != "succeeded":
                # Switch to the new repository only once it is complete; until then the pods keep serving
                # the previous one (or there are none yet).
                current.observed.deployment = await self.cluster.get(
                    DEPLOYMENT, manifest["metadata"]["namespace"], manifest["metadata"]["name"]
                )
                return
        if current.md.spec.autoscaling is not None:
            await self._hand_replicas_over(current, manifest)
        current.observed.deployment = await self._apply_if_needed(current, manifest)

    async def _hand_replicas_over(self, current: Round, manifest: Manifest) -> None:
        """Before our apply stops setting `replicas` (an autoscaler takes over), let a second field manager
        co-own the current value: a field that its last manager drops is reset to the default of 1, which
        would scale a busy Deployment down to one pod until the autoscaler scales it back up."""
        metadata = manifest["metadata"]
        live = await self.cluster.get(DEPLOYMENT, metadata["namespace"], metadata["name"])
        if live is None or not is_owned_by(live, current.uid) or not _applies_replicas(live):
            return
        handoff = {
            "apiVersion": DEPLOYMENT.api_version,
            "kind": DEPLOYMENT.kind,
            "metadata": {"name": metadata["name"], "namespace": metadata["namespace"]},
            "spec": {"replicas": live["spec"]["replicas"]},
        }
        await self._write(
            current, DEPLOYMENT, "apply", self.cluster.apply(handoff, field_manager=REPLICAS_HANDOFF_MANAGER)
        )

    async def plan_rollout(self, current: Round) -> None:
        await plan_rollout(self, current)

    async def ensure_canary(self, current: Round) -> None:
        await ensure_canary(self, current)

    async def separate_canary_pods(self, current: Round) -> None:
        await separate_canary_pods(self, current)

    async def ensure_service(self, current: Round) -> None:
        await self._apply_if_needed(current, current.desired.service)

    async def ensure_autoscaler(self, current: Round) -> None:
        autoscaling = current.md.spec.autoscaling
        name = current.desired.owner.names.autoscaler
        engine = autoscaling.engine if autoscaling is not None else None
        # Switching engines (or turning autoscaling off) removes the autoscaler we own, and no other.
        if engine is not AutoscalingEngine.HPA:
            await self._prune(current, HORIZONTAL_POD_AUTOSCALER, name)
        if engine is not AutoscalingEngine.KEDA and current.capabilities.keda:
            await self._prune(current, SCALED_OBJECT, name)
        if current.desired.horizontal_pod_autoscaler is not None:
            current.observed.autoscaler = await self._apply_if_needed(
                current, current.desired.horizontal_pod_autoscaler
            )
        elif current.desired.scaled_object is not None and current.capabilities.keda:
            scaled_object = await self._apply_if_needed(current, current.desired.scaled_object)
            current.observed.autoscaler = scaled_object
            hpa_name = ((scaled_object or {}).get("status") or {}).get("hpaName")
            if hpa_name:
                current.observed.keda_hpa = await self.cluster.get(
                    HORIZONTAL_POD_AUTOSCALER, current.md.metadata.namespace, str(hpa_name)
                )

    async def ensure_pod_disruption_budget(self, current: Round) -> None:
        manifest = current.desired.pod_disruption_budget
        if manifest is not None:
            await self._apply_if_needed(current, manifest)
        else:
            await self._prune(
                current, POD_DISRUPTION_BUDGET, current.desired.owner.names.pod_disruption_budget
            )

    async def ensure_service_monitor(self, current: Round) -> None:
        if current.desired.service_monitor is not None:
            await self._apply_if_needed(current, current.desired.service_monitor)

    async def ensure_network_policy(self, current: Round) -> None:
        manifest = current.desired.network_policy
        if manifest is not None:
            await self._apply_if_needed(current, manifest)
        else:
            await self._prune(current, NETWORK_POLICY, current.desired.owner.names.network_policy)

    async def prune_build_jobs(self, current: Round) -> None:
        """Delete build Jobs of repositories neither wanted nor still served."""
        keep = {current.desired.digest} if current.md.spec.cache is not None else set()
        serving = deployed_digest(current.observed.deployment)
        if serving is not None and current.md.spec.cache is not None:
            keep.add(serving)
        owned = self._owned_names(JOB, current.uid)
        if owned is not None and not owned:
            return  # the watch has seen no Job of ours
        jobs = await self.cluster.list(
            JOB,
            current.md.metadata.namespace,
            {NAME_LABEL: label_value(current.md.metadata.name), COMPONENT: MODEL_BUILDER},
        )
        for job in jobs:
            digest = ((job.get("metadata") or {}).get("annotations") or {}).get(MODEL_DIGEST_ANNOTATION)
            if digest in keep or not is_owned_by(job, current.uid):
                continue
            await self._delete(current, JOB, job["metadata"]["name"])

    async def observe_pods(self, current: Round) -> None:
        namespace, labels = current.md.metadata.namespace, selector_labels(current.desired.owner)
        pods = self.inventory.pods(namespace, labels) if self.inventory is not None else None
        current.observed.pods = pods if pods is not None else await self.cluster.list(POD, namespace, labels)
        job = current.observed.build_job
        triton = current.md.spec.triton
        outcome = job_outcome(job)[0] if job is not None else "missing"
        if job is not None and (
            # Why a build does not progress (image pull, scheduling, OOM) shows only on its pods, and so
            # does the accuracy gate's result (the builder's termination message).
            outcome == "running" or (outcome == "succeeded" and needs_gate(triton.quantization, triton.dtype))
        ):
            build_pods = await self.cluster.list(POD, namespace, {JOB_NAME_LABEL: job["metadata"]["name"]})
            current.observed.build_pods = [pod_summary(pod) for pod in build_pods]

    async def observe_build_progress(self, current: Round) -> None:
        observed = current.observed
        current_pods = [pod for pod in observed.pods if pod_digest(pod) == observed.digest]
        building = running_builders(observed.build_pods) or running_builders(current_pods)
        current.building = bool(building)
        observed.build_report = await self._progress.latest(
            current.uid, current.md.metadata.namespace, building
        )

    async def observe_nodes(self, current: Round) -> None:
        if current.md.spec.resources.gpus > 0:
            current.observed.nodes = await self.nodes()
