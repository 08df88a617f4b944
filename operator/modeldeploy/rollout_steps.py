"""The reconciler's canary steps: read what the rollout needs from the cluster (and Prometheus), let the
pure step machine (`rollout.py`) decide, and apply its decision to the children.

`plan_rollout` runs before the stable Deployment is applied (it may pin that Deployment's template to the
revision it serves), `ensure_canary` after it, `separate_canary_pods` after the pods are observed (the
canary's pods are reported in `status.rollout`, not counted as the stable revision's), and
`rollout_status` folds the decision into the status the reconciler writes.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from modeldeploy.api import (
    Condition,
    ConditionStatus,
    ModelDeployment,
    ModelDeploymentStatus,
    RevisionMetrics,
    RolloutPhase,
    RolloutStatus,
    TrafficSplit,
)
from modeldeploy.kinds import DEPLOYMENT, HTTP_ROUTE, HTTP_ROUTE_CRD, SERVICE, Kind
from modeldeploy.kube import Cluster
from modeldeploy.manifests import DesiredState, Manifest
from modeldeploy.manifests.canary import (
    build_canary_deployment,
    build_canary_service,
    build_http_route,
    canary_name,
    is_canary_pod,
)
from modeldeploy.observations import Observed, deployed_digest, job_outcome
from modeldeploy.prometheus import MetricsError, MetricsSource, PrometheusClient, RevisionSelector
from modeldeploy.rollout import Decision, Seen, advance, analysis_due, canary_replicas
from modeldeploy.settings import ClusterCapabilities, RenderSettings


class _Round(Protocol):
    """What these steps read and write of one reconciliation in progress (modeldeploy.reconcile's round);
    a protocol, so that this module does not import the reconciler that calls it."""

    md: ModelDeployment
    uid: str
    desired: DesiredState
    capabilities: ClusterCapabilities
    observed: Observed
    refused: list[str]
    previous: ModelDeploymentStatus | None
    rollout: Decision | None


class Reconciler(Protocol):
    """What these steps use of the reconciler: its cluster, settings, clocks and apply/prune."""

    @property
    def cluster(self) -> Cluster: ...
    @property
    def settings(self) -> RenderSettings: ...
    @property
    def metrics_sources(self) -> MetricsSources: ...
    @property
    def wall_clock(self) -> Callable[[], float]: ...

    async def _apply_if_needed(self, current: Any, manifest: Manifest) -> dict[str, Any] | None: ...

    async def _prune(self, current: Any, kind: Kind, name: str) -> None: ...


CANARY_CONDITION = "Canary"
FAILED_PHASES = (RolloutPhase.ROLLED_BACK,)


class MetricsSources:
    """One Prometheus client per query URL, made on first use."""

    def __init__(self, factory: Callable[[str], MetricsSource] = PrometheusClient) -> None:
        self._factory = factory
        self._sources: dict[str, MetricsSource] = {}

    def __call__(self, url: str) -> MetricsSource:
        if url not in self._sources:
            self._sources[url] = self._factory(url)
        return self._sources[url]


def _conditions(obj: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


def settled(deployment: Mapping[str, Any] | None, replicas: int | None = None) -> bool:
    """Every replica of the Deployment's current template is up and ready (at `replicas`, if given)."""
    if deployment is None:
        return False
    spec_replicas = int((deployment.get("spec") or {}).get("replicas") or 0)
    if replicas is not None and spec_replicas != replicas:
        return False
    status = deployment.get("status") or {}
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    if int(status.get("observedGeneration") or 0) < generation:
        return False
    return (
        int(status.get("replicas") or 0) == spec_replicas
        and int(status.get("updatedReplicas") or 0) >= spec_replicas
        and int(status.get("availableReplicas") or 0) >= spec_replicas
    )


def stalled(deployment: Mapping[str, Any] | None) -> str | None:
    progressing = _conditions(deployment).get("Progressing") or {}
    if progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        return str(progressing.get("message") or "ProgressDeadlineExceeded")
    return None


def _stable_replicas(md: ModelDeployment, stable: Mapping[str, Any] | None) -> int:
    if md.spec.autoscaling is None:
        return md.spec.replicas
    # The autoscaler's count: it targets the stable Deployment, the canary follows.
    return int(((stable or {}).get("spec") or {}).get("replicas") or 0)


async def plan_rollout(reconciler: Reconciler, current: _Round) -> None:
    md = current.md
    canary = md.spec.canary
    previous = current.previous.rollout if current.previous is not None else None
    if canary is None and previous is None:
        return
    namespace = md.metadata.namespace
    manifest = current.desired.deployment
    stable = await reconciler.cluster.get(DEPLOYMENT, namespace, manifest["metadata"]["name"])
    live_canary = await reconciler.cluster.get(DEPLOYMENT, namespace, canary_name(md.metadata.name))
    if live_canary is not None and not _owned(live_canary, current.uid):
        live_canary = None
    stable_digest = deployed_digest(stable) if stable is not None and _owned(stable, current.uid) else None
    now = reconciler.wall_clock()
    wanted_canary = None
    if (
        canary is not None
        and previous is not None
        and previous.phase
        in (
            RolloutPhase.PROGRESSING,
            RolloutPhase.PROMOTING,
        )
    ):
        wanted_canary = canary_replicas(_stable_replicas(md, stable), previous.weight, canary.traffic)
    canary_current = (
        live_canary is not None
        and previous is not None
        and (deployed_digest(live_canary) == previous.canary_digest)
    )
    seen = Seen(
        desired_digest=current.desired.digest,
        stable_digest=stable_digest,
        stable_rolled_out=settled(stable),
        canary_ready=canary_current and wanted_canary is not None and settled(live_canary, wanted_canary),
        canary_stalled=stalled(live_canary) if canary_current else None,
        now=now,
    )
    metrics: tuple[RevisionMetrics, RevisionMetrics] | None = None
    metrics_error: str | None = None
    if canary is not None and analysis_due(previous, canary, now):
        url = canary.analysis.prometheus_url or reconciler.settings.prometheus_url
        source = reconciler.metrics_sources(url)
        model = current.desired.owner.names.model_name
        window = canary.analysis.interval_seconds
        try:
            metrics = (
                await source.revision(
                    RevisionSelector(namespace, canary_name(md.metadata.name), model), window
                ),
                await source.revision(
                    RevisionSelector(namespace, manifest["metadata"]["name"], model), window
                ),
            )
        except MetricsError as exc:
            metrics_error = str(exc)
    decision = advance(canary, previous, seen, metrics, metrics_error)
    current.rollout = decision
    if decision.pin_stable and stable is not None and stable_digest is not None:
        pinned = copy.deepcopy(manifest)
        template = copy.deepcopy(stable["spec"]["template"])
        # Server-filled, and null in some versions: not ours to apply.
        (template.get("metadata") or {}).pop("creationTimestamp", None)
        pinned["spec"]["template"] = template
        current.desired = dataclasses.replace(current.desired, deployment=pinned)
        # The status reports the revision that serves; the canary's is in status.rollout.
        current.observed.digest = stable_digest


def _owned(obj: Mapping[str, Any], uid: str) -> bool:
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(reference.get("uid") == uid for reference in references)


async def ensure_canary(reconciler: Reconciler, current: _Round) -> None:
    md = current.md
    decision = current.rollout
    canary = md.spec.canary
    name = canary_name(md.metadata.name)
    if decision is None and canary is None:
        return  # no canary now, none before: nothing of one can exist
    weight = decision.canary_weight if decision is not None else None
    routed = canary is not None and canary.traffic is TrafficSplit.HTTP_ROUTE
    if current.capabilities.gateway_api:
        if routed and canary is not None:
            # Kept between canaries too (all to the stable Service): the Gateway's clients need a route.
            await reconciler._apply_if_needed(current, build_http_route(md, canary, weight))
        else:
            await reconciler._prune(current, HTTP_ROUTE, current.desired.owner.names.service)
    elif routed:
        current.refused.append(
            f"spec.rollout.canary.traffic HTTPRoute needs the Gateway API (CRD {HTTP_ROUTE_CRD}) installed"
        )
    if canary is None or weight is None:
        await reconciler._prune(current, DEPLOYMENT, name)
        await reconciler._prune(current, SERVICE, name)
        return
    if md.spec.cache is not None and job_outcome(current.observed.build_job)[0] != "succeeded":
        return  # the canary's repository is still being built
    stable = current.observed.deployment
    replicas = canary_replicas(_stable_replicas(md, stable), weight, canary.traffic)
    await reconciler._apply_if_needed(
        current,
        build_canary_deployment(
            md, reconciler.settings, canary, replicas, current.desired.calibration_sha256
        ),
    )
    if routed:
        await reconciler._apply_if_needed(current, build_canary_service(md))
    else:
        await reconciler._prune(current, SERVICE, name)


async def separate_canary_pods(reconciler: Reconciler, current: _Round) -> None:
    """The canary's pods share the stable pods' labels (traffic Replicas): leave them out of the stable
    revision's pod count and problems."""
    del reconciler
    current.observed.pods = [pod for pod in current.observed.pods if not is_canary_pod(pod)]


def rollout_status(
    status: ModelDeploymentStatus, decision: Decision | None, previous: ModelDeploymentStatus | None, now: str
) -> ModelDeploymentStatus:
    """`status` with the rollout's state and its Canary condition."""
    state: RolloutStatus | None = decision.state if decision is not None else None
    if state is None:
        return status.model_copy(update={"rollout": None})
    failed = state.phase in FAILED_PHASES
    reason = "CanaryFailed" if failed else f"Canary{state.phase.value}"
    before = next(
        (c for c in (previous.conditions if previous else None) or [] if c.type == CANARY_CONDITION), None
    )
    condition_status = ConditionStatus.FALSE if failed else ConditionStatus.TRUE
    condition = Condition(
        type=CANARY_CONDITION,
        status=condition_status,
        reason=reason,
        message=state.message or "",
        observed_generation=status.observed_generation,
        last_transition_time=(
            before.last_transition_time if before is not None and before.status == condition_status else now
        ),
    )
    conditions = [c for c in status.conditions or [] if c.type != CANARY_CONDITION] + [condition]
    return status.model_copy(update={"rollout": state, "conditions": conditions})
