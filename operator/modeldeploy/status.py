"""The ModelDeployment's status, computed (purely) from what the owned objects report.

Level-based: given the live children, the answer is the same however we got here. Conditions follow
metav1.Condition: `lastTransitionTime` moves only when `status` changes, so recomputing an unchanged status
yields an identical object and the operator writes nothing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from model_repo.options import ModelFormat, Task
from modeldeploy.api import (
    AccuracyStatus,
    AutoscalingEngine,
    Condition,
    ConditionStatus,
    Endpoints,
    ModelDeployment,
    ModelDeploymentStatus,
    ModelRepositoryStatus,
    Phase,
)
from modeldeploy.builders.common import owner_of
from modeldeploy.builders.service import endpoints
from modeldeploy.digest import device
from modeldeploy.labels import MODEL_DIGEST_ANNOTATION, selector_string

MODEL_REPOSITORY_READY = "ModelRepositoryReady"
AVAILABLE = "Available"
AUTOSCALER_READY = "AutoscalerReady"
READY = "Ready"
CONDITION_TYPES = (MODEL_REPOSITORY_READY, AVAILABLE, AUTOSCALER_READY, READY)
INVALID_SPEC = "InvalidSpec"
BUILDER_CONTAINER = "model-builder"

TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN
# Reasons of a not-yet-True condition that are the normal way there, not a problem (Normal Events).
PROGRESS_REASONS = frozenset({"Pending", "NoPods", "Building", "RollingOut", "PodsStarting"})


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Verdict:
    """A condition before it gets its generation and transition time."""

    type: str
    status: ConditionStatus
    reason: str
    message: str


@dataclass
class Observed:
    """What the reconciler saw (and did) this round; the only input of the status besides the spec."""

    digest: str
    deployment: dict[str, Any] | None = None
    build_job: dict[str, Any] | None = None
    cache_claim: dict[str, Any] | None = None
    autoscaler: dict[str, Any] | None = None
    keda_installed: bool = True
    pods: list[dict[str, Any]] = field(default_factory=list)
    # Children the API server refused (e.g. an admission webhook or quota); shown, then retried.
    apply_errors: list[str] = field(default_factory=list)


def _conditions_of(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


def _name(obj: dict[str, Any] | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("name", "?"))


def deployed_digest(deployment: dict[str, Any] | None) -> str | None:
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    digest = annotations.get(MODEL_DIGEST_ANNOTATION)
    return str(digest) if digest else None


def job_outcome(job: dict[str, Any] | None) -> tuple[str, str]:
    """("succeeded" | "failed" | "running" | "missing", message) of a build Job."""
    if job is None:
        return "missing", ""
    conditions = _conditions_of(job)
    for kind in ("Complete", "SuccessCriteriaMet"):
        if conditions.get(kind, {}).get("status") == "True":
            return "succeeded", ""
    if (job.get("status") or {}).get("succeeded", 0) >= 1:
        return "succeeded", ""
    for kind in ("Failed", "FailureTarget"):
        condition = conditions.get(kind, {})
        if condition.get("status") == "True":
            return "failed", str(condition.get("message") or condition.get("reason") or "the Job failed")
    return "running", ""


def _pod_build_failure(pods: list[dict[str, Any]]) -> str | None:
    """The first pod whose builder init container failed, as a message."""
    for pod in pods:
        for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
            if status.get("name") != BUILDER_CONTAINER:
                continue
            state = status.get("state") or {}
            last = (status.get("lastState") or {}).get("terminated") or {}
            terminated = state.get("terminated") or {}
            waiting = state.get("waiting") or {}
            if terminated and terminated.get("exitCode", 0) != 0:
                detail = (
                    terminated.get("message")
                    or terminated.get("reason")
                    or f"exit code {terminated['exitCode']}"
                )
                return f"pod {_name(pod)}: model build failed: {str(detail).strip()}"
            if waiting.get("reason") == "CrashLoopBackOff":
                detail = last.get("message") or last.get("reason") or waiting.get("message") or "crash loop"
                return f"pod {_name(pod)}: model build keeps failing: {str(detail).strip()}"
    return None


def pod_summary(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the parts of a pod that the status reads (name, repository digest, Ready condition,
    builder container): what the operator keeps of each pod it watches."""
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    digest = (metadata.get("annotations") or {}).get(MODEL_DIGEST_ANNOTATION)
    return copy.deepcopy(
        {
            "metadata": {
                "name": metadata.get("name"),
                "annotations": {MODEL_DIGEST_ANNOTATION: digest} if digest is not None else {},
            },
            "status": {
                "conditions": [c for c in status.get("conditions") or [] if c.get("type") == "Ready"],
                "initContainerStatuses": [
                    s for s in status.get("initContainerStatuses") or [] if s.get("name") == BUILDER_CONTAINER
                ],
            },
        }
    )


def _pod_is_ready(pod: dict[str, Any]) -> bool:
    return _conditions_of(pod).get("Ready", {}).get("status") == "True"


def _desired_replicas(md: ModelDeployment, deployment: dict[str, Any] | None) -> int:
    if md.spec.autoscaling is None:
        return md.spec.replicas
    live = ((deployment or {}).get("spec") or {}).get("replicas")
    return int(live) if live is not None else max(md.spec.autoscaling.min_replicas, 1)


def repository_verdict(md: ModelDeployment, observed: Observed) -> Verdict:
    digest = observed.digest
    if md.spec.cache is not None:
        job = observed.build_job
        outcome, detail = job_outcome(job)
        if outcome == "succeeded":
            return Verdict(MODEL_REPOSITORY_READY, TRUE, "Built", f"repository {digest} is in the cache")
        if outcome == "failed":
            return Verdict(
                MODEL_REPOSITORY_READY,
                FALSE,
                "BuildFailed",
                f"build Job {_name(job)} failed: {detail} (fix the spec, or delete the Job to retry)",
            )
        message = f"build Job {_name(job)} is building repository {digest}"
        claim_phase = ((observed.cache_claim or {}).get("status") or {}).get("phase")
        if observed.cache_claim is not None and claim_phase != "Bound":
            message += f"; claim {_name(observed.cache_claim)} is {claim_phase or 'not bound yet'}"
        return Verdict(MODEL_REPOSITORY_READY, FALSE, "Building", message)
    failure = _pod_build_failure(observed.pods)
    if failure is not None:
        return Verdict(MODEL_REPOSITORY_READY, FALSE, "BuildFailed", failure)
    current = [pod for pod in observed.pods if _pod_digest(pod) == digest]
    if any(_pod_is_ready(pod) for pod in current):
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
    return Verdict(MODEL_REPOSITORY_READY, FALSE, "Building", f"pods are building repository {digest}")


def build_accuracy(observed: Observed) -> AccuracyStatus | None:
    """The accuracy gate's result, from the termination message the builder of a current pod left."""
    for pod in observed.pods:
        if _pod_digest(pod) != observed.digest:
            continue
        for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if status.get("name") != BUILDER_CONTAINER or terminated.get("exitCode") != 0:
                continue
            try:
                accuracy = json.loads(terminated.get("message") or "{}").get("accuracy")
                return AccuracyStatus.model_validate(accuracy) if accuracy else None
            except (ValueError, AttributeError):  # a message from an older builder, or none
                return None
    return None


def _pod_digest(pod: dict[str, Any]) -> str | None:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(MODEL_DIGEST_ANNOTATION)
    return str(value) if value else None


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
    progressing = _conditions_of(deployment).get("Progressing", {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return Verdict(AVAILABLE, FALSE, "ProgressDeadlineExceeded", str(progressing.get("message", "")))
    if progressing.get("reason") == "NewReplicaSetAvailable":
        # The rollout had finished, yet nothing serves now: pods failed after starting.
        return Verdict(AVAILABLE, FALSE, "NoReplicasAvailable", f"0 of {desired} pods available")
    return Verdict(AVAILABLE, FALSE, "PodsStarting", f"0 of {desired} pods available yet")


def autoscaler_verdict(md: ModelDeployment, observed: Observed) -> Verdict:
    autoscaling = md.spec.autoscaling
    if autoscaling is None:
        return Verdict(AUTOSCALER_READY, TRUE, "FixedReplicas", f"replicas fixed at {md.spec.replicas}")
    if autoscaling.engine is AutoscalingEngine.KEDA:
        if not observed.keda_installed:
            return Verdict(
                AUTOSCALER_READY,
                FALSE,
                "KedaNotInstalled",
                "spec.autoscaling.engine keda needs KEDA (CRD scaledobjects.keda.sh not found)",
            )
        if observed.autoscaler is None:
            return Verdict(AUTOSCALER_READY, UNKNOWN, "Pending", "ScaledObject not created yet")
        ready = _conditions_of(observed.autoscaler).get("Ready")
        if ready is None:
            return Verdict(
                AUTOSCALER_READY, UNKNOWN, "Pending", "KEDA has not reported on the ScaledObject yet"
            )
        if ready.get("status") == "True":
            return Verdict(AUTOSCALER_READY, TRUE, "ScaledObjectReady", str(ready.get("message") or "ready"))
        return Verdict(
            AUTOSCALER_READY,
            FALSE,
            str(ready.get("reason") or "ScaledObjectNotReady"),
            str(ready.get("message", "")),
        )
    if observed.autoscaler is None:
        return Verdict(AUTOSCALER_READY, UNKNOWN, "Pending", "HorizontalPodAutoscaler not created yet")
    conditions = _conditions_of(observed.autoscaler)
    for kind in ("AbleToScale", "ScalingActive"):
        condition = conditions.get(kind)
        if condition is not None and condition.get("status") != "True":
            return Verdict(
                AUTOSCALER_READY,
                FALSE,
                str(condition.get("reason") or f"Not{kind}"),
                str(condition.get("message", "")),
            )
    if "ScalingActive" not in conditions:
        return Verdict(
            AUTOSCALER_READY, UNKNOWN, "Pending", "the HorizontalPodAutoscaler has not reported yet"
        )
    return Verdict(
        AUTOSCALER_READY, TRUE, "ScalingActive", str(conditions["ScalingActive"].get("message") or "scaling")
    )


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
    if updated < desired or ready < desired or total > desired:
        return f"rolling out: {updated} updated, {ready} ready, {total} total of {desired}"
    return None


def ready_verdict(md: ModelDeployment, observed: Observed, parts: list[Verdict]) -> Verdict:
    if observed.apply_errors:
        return Verdict(READY, FALSE, "ApplyFailed", "; ".join(observed.apply_errors))
    repository, available, _autoscaler = parts
    if repository.status is FALSE:
        return Verdict(READY, FALSE, repository.reason, repository.message)
    if available.status is not TRUE:
        return Verdict(READY, FALSE, available.reason, available.message)
    gap = _rollout_gap(md, observed)
    if gap is not None:
        return Verdict(READY, FALSE, "RollingOut", gap)
    serving = endpoints(md)
    return Verdict(READY, TRUE, "Serving", f"model {serving['modelName']} is served at {serving['http']}")


def _phase(verdicts: dict[str, Verdict]) -> Phase:
    repository, available, autoscaler, ready = (verdicts[t] for t in CONDITION_TYPES)
    if ready.status is TRUE:
        return Phase.DEGRADED if autoscaler.status is FALSE else Phase.READY
    if repository.reason == "BuildFailed" or ready.reason == "ApplyFailed":
        return Phase.DEGRADED if available.status is TRUE else Phase.FAILED
    if repository.status is FALSE:
        return Phase.BUILDING
    if available.status is TRUE:
        return Phase.DEPLOYING
    if available.reason == "ProgressDeadlineExceeded":
        return Phase.FAILED
    return Phase.DEPLOYING if observed_some_pods(verdicts) else Phase.PENDING


def observed_some_pods(verdicts: dict[str, Verdict]) -> bool:
    return verdicts[AVAILABLE].reason != "Pending"


def _with_times(
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


def _previous_conditions(previous: ModelDeploymentStatus | None) -> dict[str, Condition]:
    return {condition.type: condition for condition in (previous.conditions if previous else None) or []}


def resolved_format(md: ModelDeployment) -> ModelFormat | None:
    """The format the builder will pick, when it can be known without the checkpoint."""
    requested = md.spec.triton.format
    if requested is not ModelFormat.AUTO:
        return requested
    if md.spec.model.task is None:
        # `auto` depends on the detected task, but only on GPUs: everything else is the Python runtime.
        return ModelFormat.PYTHON if device(md.spec) == "cpu" else None
    generating = md.spec.model.task is Task.TEXT_GENERATION and device(md.spec) == "gpu"
    return ModelFormat.VLLM if generating else ModelFormat.PYTHON


def compute_status(
    md: ModelDeployment, observed: Observed, previous: ModelDeploymentStatus | None, now: str
) -> ModelDeploymentStatus:
    parts = [
        repository_verdict(md, observed),
        available_verdict(md, observed),
        autoscaler_verdict(md, observed),
    ]
    verdicts = {verdict.type: verdict for verdict in [*parts, ready_verdict(md, observed, parts)]}
    generation = md.metadata.generation
    before = _previous_conditions(previous)
    deployment_status = (observed.deployment or {}).get("status") or {}
    desired = _desired_replicas(md, observed.deployment)
    ready_replicas = int(deployment_status.get("readyReplicas") or 0)
    ready = verdicts[READY]
    return ModelDeploymentStatus(
        observed_generation=generation,
        phase=_phase(verdicts),
        conditions=[_with_times(verdicts[kind], before, generation, now) for kind in CONDITION_TYPES],
        replicas=int(deployment_status.get("replicas") or 0),
        ready_replicas=ready_replicas,
        replica_summary=f"{ready_replicas}/{desired}",
        selector=selector_string_for(md),
        endpoints=Endpoints.model_validate(endpoints(md)),
        model_repository=ModelRepositoryStatus(
            digest=observed.digest,
            format=resolved_format(md),
            task=md.spec.model.task,
            accuracy=build_accuracy(observed),
        ),
        message=ready.message if ready.status is not TRUE else None,
    )


def selector_string_for(md: ModelDeployment) -> str:
    return selector_string(owner_of(md))


def invalid_spec_status(
    previous: ModelDeploymentStatus | None, generation: int | None, messages: list[str], now: str
) -> ModelDeploymentStatus:
    """Ready=False/InvalidSpec; the other conditions keep what they said (the old children still run)."""
    before = _previous_conditions(previous)
    message = "; ".join(messages)
    ready = _with_times(Verdict(READY, FALSE, INVALID_SPEC, message), before, generation, now)
    kept = [before[kind] for kind in CONDITION_TYPES[:-1] if kind in before]
    base = previous.model_copy() if previous is not None else ModelDeploymentStatus()
    return base.model_copy(
        update={
            "observed_generation": generation,
            "phase": Phase.FAILED,
            "conditions": [*kept, ready],
            "message": message,
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
    condition: str
    status: ConditionStatus
    reason: str
    message: str

    @property
    def event_type(self) -> str:
        return "Normal" if self.status is TRUE or self.reason in PROGRESS_REASONS else "Warning"


def transitions(previous: ModelDeploymentStatus | None, current: ModelDeploymentStatus) -> list[Transition]:
    """Conditions whose status or reason changed: one Event each."""
    before = _previous_conditions(previous)
    changed = []
    for condition in current.conditions or []:
        old = before.get(condition.type)
        if old is None or old.status != condition.status or old.reason != condition.reason:
            changed.append(Transition(condition.type, condition.status, condition.reason, condition.message))
    return changed
