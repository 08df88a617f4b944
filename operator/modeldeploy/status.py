"""The ModelDeployment's status, computed (purely) from what the owned objects report.

Level-based: given the live children, the answer is the same however we got here. Conditions follow
metav1.Condition: `lastTransitionTime` moves only when `status` changes, so recomputing an unchanged status
yields an identical object and the operator writes nothing. What each object says is read in
observations.py; the verdicts on the conditions are here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from model_repo.options import ModelFormat, auto_format
from model_repo.progress import DEFAULT_STALL_SECONDS, STALLED_MESSAGE, Stage
from modeldeploy.api import (
    AccuracyStatus,
    Condition,
    ConditionStatus,
    Endpoints,
    ModelDeployment,
    ModelDeploymentStatus,
    ModelRepositoryStatus,
    Phase,
)
from modeldeploy.digest import device
from modeldeploy.labels import selector_string
from modeldeploy.manifests.common import owner_of
from modeldeploy.manifests.service import endpoints
from modeldeploy.observations import (
    BUILD_FAILED,
    CREATE_FAILED,
    DOWNLOAD_STALLED,
    UNSCHEDULABLE,
    Observed,
    PodProblem,
    build_accuracy,
    conditions_of,
    deployed_digest,
    job_outcome,
    name_of,
    one_line,
    placement_warning,
    pod_digest,
    pod_is_ready,
    pod_problem,
    running_builders,
    summarize_pod_problems,
)
from modeldeploy.scaling import AUTOSCALER_READY, SCALING_READY, autoscaler_verdict, scaling_verdict
from modeldeploy.verdict import FALSE, TRUE, UNKNOWN, Verdict

MODEL_REPOSITORY_READY = "ModelRepositoryReady"
AVAILABLE = "Available"
READY = "Ready"
CONDITION_TYPES = (MODEL_REPOSITORY_READY, AVAILABLE, AUTOSCALER_READY, SCALING_READY, READY)
INVALID_SPEC = "InvalidSpec"
# Failures of the taxonomy that the pods alone do not tell (those are in observations.py).
QUOTA_EXCEEDED = "QuotaExceeded"
CACHE_CLAIM_PENDING = "CacheClaimPending"
ROLLOUT_STUCK = "RolloutStuck"
# A builder's failures (reasons of the pods' taxonomy).
BUILD_FAILURES = (BUILD_FAILED, DOWNLOAD_STALLED)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _desired_replicas(md: ModelDeployment, deployment: dict[str, Any] | None) -> int:
    if md.spec.autoscaling is None:
        return md.spec.replicas
    live = ((deployment or {}).get("spec") or {}).get("replicas")
    return int(live) if live is not None else max(md.spec.autoscaling.min_replicas, 1)


def claim_verdict(observed: Observed) -> Verdict | None:
    """CacheClaimPending while the cache claim is not bound: a failure once its Events say why."""
    claim = observed.cache_claim
    if claim is None:
        return None
    phase = (claim.get("status") or {}).get("phase")
    if phase == "Bound":
        return None
    warnings = [event for event in observed.claim_events if event.get("type") == "Warning"]
    storage_class = (claim.get("spec") or {}).get("storageClassName")
    of_class = f" (storageClassName {storage_class!r})" if storage_class else ""
    if warnings:
        latest = warnings[-1]
        message = (
            f"cache claim {name_of(claim)}{of_class} is {phase or 'not bound'}: "
            f"{latest.get('reason')}: {one_line(str(latest.get('message', '')))}"
        )
        return Verdict.failure(MODEL_REPOSITORY_READY, CACHE_CLAIM_PENDING, message)
    message = f"cache claim {name_of(claim)}{of_class} is {phase or 'not bound'} yet"
    return Verdict(MODEL_REPOSITORY_READY, FALSE, CACHE_CLAIM_PENDING, message)


def repository_verdict(md: ModelDeployment, observed: Observed) -> Verdict:
    digest = observed.digest
    if md.spec.cache is not None:
        job = observed.build_job
        outcome, detail = job_outcome(job)
        if outcome == "succeeded":
            return Verdict(MODEL_REPOSITORY_READY, TRUE, "Built", f"repository {digest} is in the cache")
        if outcome == "failed":
            return Verdict.failure(
                MODEL_REPOSITORY_READY,
                BUILD_FAILED,
                f"build Job {name_of(job)} failed: {one_line(detail)} "
                "(fix the spec, or delete the Job to retry)",
            )
        pending = claim_verdict(observed)
        if pending is not None:
            return pending
        problem = summarize_pod_problems(observed.build_pods)
        if problem is not None:
            message = f"build Job {name_of(job)}: {problem.detail.replace('pods', 'builder pods', 1)}"
            return Verdict.failure(MODEL_REPOSITORY_READY, problem.reason, message)
        if job is None:
            return Verdict(
                MODEL_REPOSITORY_READY,
                FALSE,
                "Pending",
                f"the build Job of repository {digest} is not created yet",
            )
        return building_verdict(md, observed, f"build Job {name_of(job)} is building repository {digest}")
    current = [pod for pod in observed.pods if pod_digest(pod) == digest]
    builds = [pod for pod in current if (p := pod_problem(pod)) is not None and p.reason in BUILD_FAILURES]
    if builds:
        problem = summarize_pod_problems(builds)
        assert problem is not None
        message = problem.detail.replace(f"of {len(builds)} pods", f"of {len(current)} pods", 1)
        return Verdict.failure(MODEL_REPOSITORY_READY, problem.reason, message)
    if any(pod_is_ready(pod) for pod in current):
        return Verdict(
            MODEL_REPOSITORY_READY,
            TRUE,
            "Built",
            f"repository {digest} is built by each pod's init container",
        )
    if _desired_replicas(md, observed.deployment) == 0:
        return Verdict(
            MODEL_REPOSITORY_READY,
            UNKNOWN,
            "NoPods",
            "each pod builds the repository when it starts; none runs",
        )
    if running_builders(current):
        return building_verdict(md, observed, f"pods are building repository {digest}")
    # Nobody builds yet (pods unscheduled, pulling images, or not created): not Building, not a failure.
    return Verdict(
        MODEL_REPOSITORY_READY,
        UNKNOWN,
        "NotStarted",
        f"each pod builds repository {digest} when it starts; none has started building",
    )


def building_verdict(md: ModelDeployment, observed: Observed, building: str) -> Verdict:
    """Building, with the builder's latest report ("downloading 1.2 GiB of 4.8 GiB (25%), ..."); or
    DownloadStalled once no byte arrived for spec.model.downloadStallSeconds."""
    found = observed.build_report
    if found is None:
        return Verdict(MODEL_REPOSITORY_READY, FALSE, "Building", building)
    limit = md.spec.model.download_stall_seconds
    if found.stalled(DEFAULT_STALL_SECONDS if limit is None else limit):
        report = found.report
        said = report.message if report.stage is Stage.STALLED else f"{STALLED_MESSAGE}: {report.describe()}"
        message = (
            f"{building}: the checkpoint's {said} (pod {found.pod}); check the source's reachability and "
            "credentials, or raise spec.model.downloadStallSeconds"
        )
        return Verdict.failure(MODEL_REPOSITORY_READY, DOWNLOAD_STALLED, message)
    return Verdict(MODEL_REPOSITORY_READY, FALSE, "Building", f"{building}: {found.report.describe()}")


def _known_accuracy(previous: ModelDeploymentStatus | None, digest: str) -> AccuracyStatus | None:
    repository = previous.model_repository if previous is not None else None
    return repository.accuracy if repository is not None and repository.digest == digest else None


def replica_failure(deployment: dict[str, Any] | None) -> Verdict | None:
    """QuotaExceeded / CreateFailed: the ReplicaSet cannot create pods (the Deployment controller copies
    the new ReplicaSet's ReplicaFailure condition, FailedCreate, onto the Deployment)."""
    failure = conditions_of(deployment).get("ReplicaFailure") or {}
    if failure.get("status") != "True":
        return None
    text = one_line(str(failure.get("message") or failure.get("reason") or "FailedCreate"))
    reason = QUOTA_EXCEEDED if "exceeded quota" in text else CREATE_FAILED
    fix = "raise the namespace's ResourceQuota or lower the request" if reason == QUOTA_EXCEEDED else ""
    message = f"the ReplicaSet cannot create pods: {text}" + (f"; {fix}" if fix else "")
    return Verdict.failure(AVAILABLE, reason, message)


def _serving_pods_problem(md: ModelDeployment, observed: Observed) -> PodProblem | None:
    """The pods' failure; for Unschedulable, with what the nodes tell (the scheduler says "Insufficient
    nvidia.com/gpu", the nodes say how many the biggest one has)."""
    problem = summarize_pod_problems(observed.pods)
    if problem is None or problem.reason != UNSCHEDULABLE:
        return problem
    warning = placement_warning(md, observed.nodes)
    return problem if warning is None else PodProblem(UNSCHEDULABLE, f"{problem.detail}; {warning}")


def available_verdict(md: ModelDeployment, observed: Observed) -> Verdict:
    deployment = observed.deployment
    if deployment is None:
        waiting = (
            "the model repository build" if md.spec.cache is not None else "the Deployment to be created"
        )
        return Verdict(AVAILABLE, FALSE, "Pending", f"waiting for {waiting}")
    desired = _desired_replicas(md, deployment)
    status = deployment.get("status") or {}
    available = int(status.get("availableReplicas") or 0)
    if desired == 0:
        return Verdict(AVAILABLE, TRUE, "ScaledToZero", "scaled to zero replicas")
    if available >= 1:
        return Verdict(
            AVAILABLE, TRUE, "MinimumReplicasAvailable", f"{available} of {desired} pods available"
        )
    refused = replica_failure(deployment)
    if refused is not None:
        return refused
    problem = _serving_pods_problem(md, observed)
    if problem is not None:
        return Verdict.failure(AVAILABLE, problem.reason, problem.detail)
    progressing = conditions_of(deployment).get("Progressing", {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return Verdict.failure(
            AVAILABLE, "ProgressDeadlineExceeded", one_line(str(progressing.get("message", "")))
        )
    warning = placement_warning(md, observed.nodes)
    if warning is not None:
        return Verdict.failure(AVAILABLE, UNSCHEDULABLE, warning)
    if progressing.get("reason") == "NewReplicaSetAvailable":
        # The rollout had finished, yet nothing serves now: pods failed after starting.
        return Verdict.failure(AVAILABLE, "NoReplicasAvailable", f"0 of {desired} pods available")
    return Verdict(AVAILABLE, FALSE, "PodsStarting", f"0 of {desired} pods available yet")


def _rollout_gap(md: ModelDeployment, observed: Observed) -> str | None:
    """Why the Deployment does not serve the current spec with every pod yet; None when it does."""
    deployment = observed.deployment
    if deployment is None:
        return "no Deployment yet"
    if deployed_digest(deployment) != observed.digest:
        return f"pods still serve repository {deployed_digest(deployment)}; {observed.digest} is being built"
    status = deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation")
    if generation is not None and int(status.get("observedGeneration") or 0) < int(generation):
        return "the Deployment controller has not seen the latest change yet"
    desired = _desired_replicas(md, deployment)
    updated = int(status.get("updatedReplicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    total = int(status.get("replicas") or 0)
    if md.spec.autoscaling is not None and total == updated and ready >= 1:
        # Every pod runs the current revision and one serves: the autoscaler changing the pod count is
        # scaling, not a rollout, and ScalingReady tells it. Ready stays True (kserve#5530: a model that
        # serves must not read not-Ready for the minutes new pods take to start on each scale-up).
        return None
    if updated < desired or ready < desired or total > desired:
        return f"rolling out: {updated} updated, {ready} ready, {total} total of {desired}"
    return None


def _stuck_rollout(md: ModelDeployment, observed: Observed, available: Verdict) -> Verdict | None:
    """RolloutStuck: the new revision's pods cannot come up while the previous revision keeps serving;
    or, outside a rollout, some pods fail while others serve (the failure's own reason, Degraded)."""
    if available.status is not TRUE or observed.deployment is None:
        return None
    status = observed.deployment.get("status") or {}
    desired = _desired_replicas(md, observed.deployment)
    ready = int(status.get("readyReplicas") or 0)
    problem = replica_failure(observed.deployment)
    if problem is None:
        summary = _serving_pods_problem(md, observed)
        if summary is None:
            return None
        problem = Verdict.failure(READY, summary.reason, summary.detail)
    serving = f"{ready} of {desired} pods still serve"
    # A rollout: pods of an older template remain, or the Deployment controller has not even counted the
    # new one yet (our own apply's response, read in the same round as the new revision's first pods).
    generation = (observed.deployment.get("metadata") or {}).get("generation")
    unobserved = generation is not None and int(status.get("observedGeneration") or 0) < int(generation)
    rolling = unobserved or int(status.get("replicas") or 0) > int(status.get("updatedReplicas") or 0)
    if rolling:
        message = (
            f"the new revision cannot come up ({problem.reason}): {problem.message}; "
            f"the previous revision still serves ({ready} of {desired} pods ready)"
        )
        return Verdict.failure(READY, ROLLOUT_STUCK, message)
    return Verdict.failure(READY, problem.reason, f"{problem.message}; {serving}")


def ready_verdict(md: ModelDeployment, observed: Observed, parts: list[Verdict]) -> Verdict:
    if observed.apply_errors:
        message = "; ".join(one_line(error) for error in observed.apply_errors)
        return Verdict.failure(READY, "ApplyFailed", message)
    repository, available, _autoscaler = parts
    if repository.status is FALSE and (repository.failed or repository.reason == CACHE_CLAIM_PENDING):
        message = repository.message
        if available.status is TRUE:
            message += f"; the previous revision still serves ({available.message})"
        return Verdict(READY, FALSE, repository.reason, message, failed=repository.failed)
    stuck = _stuck_rollout(md, observed, available)
    if stuck is not None:
        return stuck
    if available.failed:
        return Verdict.failure(READY, available.reason, available.message)
    if repository.status is FALSE:
        return Verdict(READY, FALSE, repository.reason, repository.message)
    if available.status is not TRUE:
        return Verdict(READY, FALSE, available.reason, available.message)
    gap = _rollout_gap(md, observed)
    if gap is not None:
        return Verdict(READY, FALSE, "RollingOut", gap)
    serving = endpoints(md)
    # With Triton kept inside the pod (spec.api.exposeTriton false) the sidecar's API is the way in.
    url = next(serving[key] for key in ("http", "openai", "rerank", "classify", "tei") if key in serving)
    return Verdict(READY, TRUE, "Serving", f"model {serving['modelName']} is served at {url}")


def _phase(verdicts: dict[str, Verdict]) -> Phase:
    repository, available, autoscaler, ready = (
        verdicts[t] for t in (MODEL_REPOSITORY_READY, AVAILABLE, AUTOSCALER_READY, READY)
    )
    if ready.status is TRUE:
        return Phase.DEGRADED if autoscaler.status is FALSE else Phase.READY
    if ready.failed:
        # Something needs fixing; Degraded while an earlier revision (or some pods) still serves.
        return Phase.DEGRADED if available.status is TRUE else Phase.FAILED
    if repository.reason == "Building":
        return Phase.BUILDING
    if available.status is TRUE:
        return Phase.DEPLOYING
    return Phase.DEPLOYING if observed_some_pods(verdicts) else Phase.PENDING


def observed_some_pods(verdicts: dict[str, Verdict]) -> bool:
    return verdicts[AVAILABLE].reason != "Pending"


def with_times(
    verdict: Verdict, previous: dict[str, Condition], generation: int | None, now: str
) -> Condition:
    before = previous.get(verdict.type)
    changed = before is None or before.status != verdict.status
    return Condition(
        type=verdict.type,
        status=verdict.status,
        reason=verdict.reason,
        message=verdict.message,
        observed_generation=generation,
        last_transition_time=now if changed or before is None else before.last_transition_time,
    )


def previous_conditions(previous: ModelDeploymentStatus | None) -> dict[str, Condition]:
    return {condition.type: condition for condition in (previous.conditions if previous else None) or []}


def resolved_format(md: ModelDeployment) -> ModelFormat | None:
    """The format the builder will pick, when it can be known without the checkpoint."""
    requested = md.spec.triton.format
    if requested is not ModelFormat.AUTO:
        return requested
    return auto_format(md.spec.model.task, device(md.spec))


def compute_status(
    md: ModelDeployment, observed: Observed, previous: ModelDeploymentStatus | None, now: str
) -> ModelDeploymentStatus:
    parts = [
        repository_verdict(md, observed),
        available_verdict(md, observed),
        autoscaler_verdict(md, observed),
    ]
    scaling = scaling_verdict(md, observed, parts[2])
    verdicts = {verdict.type: verdict for verdict in [*parts, scaling, ready_verdict(md, observed, parts)]}
    deployment_status = (observed.deployment or {}).get("status") or {}
    desired = _desired_replicas(md, observed.deployment)
    ready_replicas = int(deployment_status.get("readyReplicas") or 0)
    ready = verdicts[READY]
    phase = _phase(verdicts)
    # What `kubectl get` shows: Ready's reason, or what degrades a serving model.
    headline = ready
    if ready.status is TRUE and verdicts[AUTOSCALER_READY].status is FALSE:
        headline = verdicts[AUTOSCALER_READY]
    return status_of(
        verdicts,
        CONDITION_TYPES,
        headline,
        phase,
        previous,
        md.metadata.generation,
        now,
        replicas=int(deployment_status.get("replicas") or 0),
        ready_replicas=ready_replicas,
        replica_summary=f"{ready_replicas}/{desired}",
        selector=selector_string_for(md),
        endpoints=Endpoints.model_validate(endpoints(md)),
        model_repository=ModelRepositoryStatus(
            digest=observed.digest,
            format=resolved_format(md),
            task=md.spec.model.task,
            # Kept once read: the pods that told it may be gone (a finished Job's, replaced ones).
            accuracy=build_accuracy(observed) or _known_accuracy(previous, observed.digest),
            progress=(
                observed.build_report.as_status()
                if observed.build_report is not None and verdicts[MODEL_REPOSITORY_READY].status is not TRUE
                else None
            ),
        ),
    )


def status_of(
    verdicts: Mapping[str, Verdict],
    condition_types: Sequence[str],
    headline: Verdict,
    phase: Phase,
    previous: ModelDeploymentStatus | None,
    generation: int | None,
    now: str,
    **observed: Any,
) -> ModelDeploymentStatus:
    """The status a reconcile writes, a placed model's too: the conditions of `condition_types` in that
    order, the headline verdict's reason (and message while not Ready), and what else was `observed`."""
    before = previous_conditions(previous)
    return ModelDeploymentStatus(
        observed_generation=generation,
        phase=phase,
        conditions=[with_times(verdicts[kind], before, generation, now) for kind in condition_types],
        reason=headline.reason,
        message=one_line(headline.message, limit=1024) if phase is not Phase.READY else None,
        **observed,
    )


def selector_string_for(md: ModelDeployment) -> str:
    return selector_string(owner_of(md))


def invalid_spec_status(
    previous: ModelDeploymentStatus | None, generation: int | None, messages: list[str], now: str
) -> ModelDeploymentStatus:
    """Ready=False/InvalidSpec; the other conditions keep what they said (the old children still run)."""
    before = previous_conditions(previous)
    message = "; ".join(messages)
    ready = with_times(Verdict(READY, FALSE, INVALID_SPEC, message), before, generation, now)
    kept = [before[kind] for kind in CONDITION_TYPES[:-1] if kind in before]
    base = previous.model_copy() if previous is not None else ModelDeploymentStatus()
    return base.model_copy(
        update={
            "observed_generation": generation,
            "phase": Phase.FAILED,
            "conditions": [*kept, ready],
            "reason": INVALID_SPEC,
            "message": one_line(message, limit=1024),
        }
    )


def comparable(status: ModelDeploymentStatus | dict[str, Any] | None) -> dict[str, Any]:
    """The status as JSON, without transition times: equal values mean there is nothing to write."""
    if status is None:
        return {}
    parsed = (
        status if isinstance(status, ModelDeploymentStatus) else ModelDeploymentStatus.model_validate(status)
    )
    data = parsed.dump()
    for condition in data.get("conditions") or []:
        condition.pop("lastTransitionTime", None)
    return data


@dataclass(frozen=True)
class Transition:
    """A change of Ready (its status or its reason): one Event."""

    status: ConditionStatus
    reason: str
    message: str
    # Warning when someone has to act (phase Failed or Degraded), Normal for progress.
    event_type: str


def _failing(status: ModelDeploymentStatus | None, ready: Condition | None) -> bool:
    return (
        ready is not None
        and ready.status is not TRUE
        and status is not None
        and status.phase
        in (
            Phase.FAILED,
            Phase.DEGRADED,
        )
    )


def transitions(previous: ModelDeploymentStatus | None, current: ModelDeploymentStatus) -> list[Transition]:
    """The change of Ready, if any: one Event per change of its status or reason (or of whether it is a
    failure: an unbound claim becomes one once its Events say why), not one per condition or per pod."""
    old = previous_conditions(previous).get(READY)
    new = previous_conditions(current).get(READY)
    failing = _failing(current, new)
    if new is None or (
        old is not None
        and (old.status, old.reason, _failing(previous, old)) == (new.status, new.reason, failing)
    ):
        return []
    return [Transition(new.status, new.reason, new.message, "Warning" if failing else "Normal")]
