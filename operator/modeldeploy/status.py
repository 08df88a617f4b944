"""The ModelDeployment's status, computed (purely) from what the owned objects report.

Level-based: given the live children, the answer is the same however we got here. Conditions follow
metav1.Condition: `lastTransitionTime` moves only when `status` changes, so recomputing an unchanged status
yields an identical object and the operator writes nothing.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from model_repo.options import ModelFormat, auto_format
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
from modeldeploy.digest import device
from modeldeploy.labels import (
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    MODEL_BUILDER,
    MODEL_DIGEST_ANNOTATION,
    selector_string,
)
from modeldeploy.manifests.common import owner_of
from modeldeploy.manifests.service import endpoints

MODEL_REPOSITORY_READY = "ModelRepositoryReady"
AVAILABLE = "Available"
AUTOSCALER_READY = "AutoscalerReady"
READY = "Ready"
CONDITION_TYPES = (MODEL_REPOSITORY_READY, AVAILABLE, AUTOSCALER_READY, READY)
INVALID_SPEC = "InvalidSpec"

TRITON_CONTAINER = "triton"

TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN

# The failure taxonomy (docs/operator.md, "When a model is not Ready"): the reasons that need someone to
# act. Their order is their specificity: when pods fail in several ways, the status names the first and
# counts the rest.
OUT_OF_MEMORY = "OutOfMemory"
BUILD_FAILED = "BuildFailed"
MODEL_LOAD_FAILED = "ModelLoadFailed"
IMAGE_PULL_FAILED = "ImagePullFailed"
CREATE_FAILED = "CreateFailed"
QUOTA_EXCEEDED = "QuotaExceeded"
UNSCHEDULABLE = "Unschedulable"
CACHE_CLAIM_PENDING = "CacheClaimPending"
ROLLOUT_STUCK = "RolloutStuck"
POD_FAILURE_ORDER = (
    OUT_OF_MEMORY,
    BUILD_FAILED,
    MODEL_LOAD_FAILED,
    IMAGE_PULL_FAILED,
    CREATE_FAILED,
    UNSCHEDULABLE,
)
IMAGE_PULL_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CREATE_WAITING = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
# An error line of Triton's log, in its default format (E1202 12:00:00.000 ...) or ISO8601 (as the
# Deployment sets it: 2026-12-02T12:00:00Z E 1 ...).
_LOGGED_ERROR = re.compile(r"^(?:E\d{4}\s|\d{4}-\d\d-\d\dT\S+\s+E\s)")
# How much of a quoted message (a termination message is up to Triton's last 80 log lines) a status keeps.
QUOTE_LIMIT = 400


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Verdict:
    """A condition before it gets its generation and transition time."""

    type: str
    status: ConditionStatus
    reason: str
    message: str
    # Someone has to act (a Warning; phase Failed, or Degraded while something still serves).
    failed: bool = False


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
    # The build Job's pods (with a cache), as pod_summary() keeps them.
    build_pods: list[dict[str, Any]] = field(default_factory=list)
    # The nodes, as node_summary() keeps them; None: not known (not read, or not readable).
    nodes: list[dict[str, Any]] | None = None
    # Warning Events of the cache claim, newest last (read only while the claim is unbound).
    claim_events: list[dict[str, Any]] = field(default_factory=list)
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


def one_line(text: str, limit: int = QUOTE_LIMIT) -> str:
    """A (possibly multi-line) message from Kubernetes as one line a person can read at a glance.

    A termination message of FallbackToLogsOnError is the tail of a log. In Triton's, the first error line
    is the cause ("failed to load 'bert' version 1: ...") and later ones its consequences ("failed to load
    all models"); elsewhere (a Python traceback) the last line mentioning an error is."""
    lines = [" ".join(line.split()) for line in str(text).splitlines()]
    lines = [line for line in lines if line]
    if len(lines) > 1:
        logged = [line for line in lines if _LOGGED_ERROR.match(line)]
        telling = [line for line in lines if any(w in line.lower() for w in ("error", "fail", "unable"))]
        lines = [logged[0] if logged else telling[-1] if telling else lines[-1]]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass(frozen=True)
class PodProblem:
    """Why one pod does not serve: a reason of the taxonomy and what Kubernetes said."""

    reason: str
    detail: str


def _terminated_detail(terminated: Mapping[str, Any]) -> str:
    message = terminated.get("message")
    if message:
        return one_line(str(message))
    reason = terminated.get("reason") or "Error"
    return f"{reason}, exit code {terminated.get('exitCode', '?')}"


def _limit_of(pod: Mapping[str, Any], container: str, resource: str) -> str | None:
    spec = pod.get("spec") or {}
    for item in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if item.get("name") == container:
            value = ((item.get("resources") or {}).get("limits") or {}).get(resource)
            return str(value) if value is not None else None
    return None


def _container_problem(pod: Mapping[str, Any], status: Mapping[str, Any], builder: bool) -> PodProblem | None:
    name = str(status.get("name", "?"))
    state = status.get("state") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or {}
    last = (status.get("lastState") or {}).get("terminated") or {}
    for ended in (terminated, last):
        if ended.get("reason") == "OOMKilled":
            limit = _limit_of(pod, name, "memory")
            at = f"its memory limit of {limit}" if limit else "the node's memory (no memory limit set)"
            fix = (
                "raise spec.resources.limits.memory (and requests), or serve fewer instances per device"
                if not builder
                else "the builder needs more memory for this checkpoint"
            )
            return PodProblem(OUT_OF_MEMORY, f"container {name} was OOMKilled at {at}; {fix}")
    if waiting.get("reason") in IMAGE_PULL_WAITING:
        detail = one_line(str(waiting.get("message") or waiting["reason"]))
        return PodProblem(
            IMAGE_PULL_FAILED, f"cannot pull image {status.get('image', '?')} ({waiting['reason']}): {detail}"
        )
    if waiting.get("reason") in CREATE_WAITING:
        detail = one_line(str(waiting.get("message") or waiting["reason"]))
        return PodProblem(CREATE_FAILED, f"container {name} cannot start ({waiting['reason']}): {detail}")
    crashed = terminated if terminated and int(terminated.get("exitCode", 0) or 0) != 0 else None
    if crashed is None and waiting.get("reason") == "CrashLoopBackOff":
        crashed = last or {"reason": "CrashLoopBackOff"}
    if crashed is None:
        return None
    if builder:
        return PodProblem(BUILD_FAILED, f"model build failed: {_terminated_detail(crashed)}")
    return PodProblem(MODEL_LOAD_FAILED, f"Triton exited: {_terminated_detail(crashed)}")


def pod_problem(pod: Mapping[str, Any]) -> PodProblem | None:
    """The most specific reason this pod cannot serve, if it is one of the taxonomy's."""
    status = pod.get("status") or {}
    found = [
        problem
        for builder, key in ((True, "initContainerStatuses"), (False, "containerStatuses"))
        for container in status.get(key) or []
        if (problem := _container_problem(pod, container, builder or container.get("name") == MODEL_BUILDER))
    ]
    scheduled = _conditions_of(dict(pod)).get("PodScheduled") or {}
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        found.append(PodProblem(UNSCHEDULABLE, one_line(str(scheduled.get("message") or "no node fits"))))
    if not found:
        return None
    return min(found, key=lambda problem: POD_FAILURE_ORDER.index(problem.reason))


_WHAT = {
    OUT_OF_MEMORY: "run out of memory",
    BUILD_FAILED: "fail to build the model repository",
    MODEL_LOAD_FAILED: "fail to load the model",
    IMAGE_PULL_FAILED: "cannot pull an image",
    CREATE_FAILED: "cannot start a container",
    UNSCHEDULABLE: "cannot be scheduled",
}


def summarize_pod_problems(pods: list[dict[str, Any]]) -> PodProblem | None:
    """The most specific failure among `pods`, counted ("2 of 3 pods …"), with the others counted too."""
    problems = [problem for pod in pods if (problem := pod_problem(pod)) is not None]
    if not problems:
        return None
    by_reason: dict[str, list[PodProblem]] = {}
    for problem in problems:
        by_reason.setdefault(problem.reason, []).append(problem)
    reasons = sorted(by_reason, key=POD_FAILURE_ORDER.index)
    first = by_reason[reasons[0]]
    message = f"{len(first)} of {len(pods)} pods {_WHAT[reasons[0]]}: {first[-1].detail}"
    others = [f"{len(by_reason[reason])} {_WHAT[reason]} ({reason})" for reason in reasons[1:]]
    if others:
        message += "; also " + ", ".join(others)
    return PodProblem(reasons[0], message)


def _builder_running(pods: list[dict[str, Any]]) -> bool:
    for pod in pods:
        for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
            if status.get("name") == MODEL_BUILDER and "running" in (status.get("state") or {}):
                return True
    return False


def _kept_container(container: Mapping[str, Any]) -> dict[str, Any]:
    memory = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    kept: dict[str, Any] = {"name": container.get("name"), "image": container.get("image")}
    if memory is not None:
        kept["resources"] = {"limits": {"memory": memory}}
    return kept


def pod_summary(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the parts of a pod that the status reads (name, repository digest, Ready and PodScheduled
    conditions, container states, memory limits): what the operator keeps of each pod it watches."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    digest = (metadata.get("annotations") or {}).get(MODEL_DIGEST_ANNOTATION)
    return copy.deepcopy(
        {
            "metadata": {
                "name": metadata.get("name"),
                "annotations": {MODEL_DIGEST_ANNOTATION: digest} if digest is not None else {},
            },
            "spec": {
                "initContainers": [_kept_container(c) for c in spec.get("initContainers") or []],
                "containers": [_kept_container(c) for c in spec.get("containers") or []],
            },
            "status": {
                "conditions": [
                    c for c in status.get("conditions") or [] if c.get("type") in ("Ready", "PodScheduled")
                ],
                "initContainerStatuses": list(status.get("initContainerStatuses") or []),
                "containerStatuses": list(status.get("containerStatuses") or []),
            },
        }
    )


def node_summary(node: Mapping[str, Any]) -> dict[str, Any]:
    """What the early placement warning reads of a node: its GPU product and allocatable GPUs."""
    metadata = node.get("metadata") or {}
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    return {
        "name": metadata.get("name"),
        "product": (metadata.get("labels") or {}).get(GPU_PRODUCT_LABEL),
        "gpus": int(str(allocatable.get(GPU_RESOURCE, "0")) or 0),
        "unschedulable": bool((node.get("spec") or {}).get("unschedulable")),
    }


def placement_warning(md: ModelDeployment, nodes: list[dict[str, Any]] | None) -> str | None:
    """Why no node can take the pods, when the nodes alone tell (before the scheduler has to)."""
    gpus, product = md.spec.resources.gpus, md.spec.resources.gpu_product
    if gpus == 0 or nodes is None:
        return None
    usable = [node for node in nodes if not node["unschedulable"]]
    if product is not None:
        products = sorted({str(node["product"]) for node in usable if node["product"]})
        matching = [node for node in usable if node["product"] == product]
        if not matching:
            have = ", ".join(products) if products else "none"
            return (
                f"no node has {GPU_PRODUCT_LABEL}={product} (products in the cluster: {have}); "
                "fix spec.resources.gpuProduct or add such nodes"
            )
        usable = matching
    most = max(usable, key=lambda node: node["gpus"], default=None)
    if most is None or most["gpus"] < gpus:
        where = f" with {product}" if product else ""
        best = f"the most is {most['gpus']} on {most['name']}" if most and most["gpus"] else "none has any"
        return (
            f"no node{where} has {gpus} allocatable {GPU_RESOURCE} ({best}); "
            "lower spec.resources.gpus or add bigger nodes"
        )
    return None


def _pod_is_ready(pod: dict[str, Any]) -> bool:
    return _conditions_of(pod).get("Ready", {}).get("status") == "True"


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
            f"cache claim {_name(claim)}{of_class} is {phase or 'not bound'}: "
            f"{latest.get('reason')}: {one_line(str(latest.get('message', '')))}"
        )
        return Verdict(MODEL_REPOSITORY_READY, FALSE, CACHE_CLAIM_PENDING, message, failed=True)
    message = f"cache claim {_name(claim)}{of_class} is {phase or 'not bound'} yet"
    return Verdict(MODEL_REPOSITORY_READY, FALSE, CACHE_CLAIM_PENDING, message)


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
                BUILD_FAILED,
                f"build Job {_name(job)} failed: {one_line(detail)} "
                "(fix the spec, or delete the Job to retry)",
                failed=True,
            )
        pending = claim_verdict(observed)
        if pending is not None:
            return pending
        problem = summarize_pod_problems(observed.build_pods)
        if problem is not None:
            message = f"build Job {_name(job)}: {problem.detail.replace('pods', 'builder pods', 1)}"
            return Verdict(MODEL_REPOSITORY_READY, FALSE, problem.reason, message, failed=True)
        if job is None:
            return Verdict(
                MODEL_REPOSITORY_READY,
                FALSE,
                "Pending",
                f"the build Job of repository {digest} is not created yet",
            )
        return Verdict(
            MODEL_REPOSITORY_READY,
            FALSE,
            "Building",
            f"build Job {_name(job)} is building repository {digest}",
        )
    current = [pod for pod in observed.pods if _pod_digest(pod) == digest]
    builds = [pod for pod in current if (p := pod_problem(pod)) is not None and p.reason == BUILD_FAILED]
    if builds:
        problem = summarize_pod_problems(builds)
        assert problem is not None
        message = problem.detail.replace(f"of {len(builds)} pods", f"of {len(current)} pods", 1)
        return Verdict(MODEL_REPOSITORY_READY, FALSE, BUILD_FAILED, message, failed=True)
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
    if _builder_running(current):
        return Verdict(MODEL_REPOSITORY_READY, FALSE, "Building", f"pods are building repository {digest}")
    # Nobody builds yet (pods unscheduled, pulling images, or not created): not Building, not a failure.
    return Verdict(
        MODEL_REPOSITORY_READY,
        UNKNOWN,
        "NotStarted",
        f"each pod builds repository {digest} when it starts; none has started building",
    )


def build_accuracy(observed: Observed) -> AccuracyStatus | None:
    """The accuracy gate's result, from the termination message the builder of a current pod left."""
    for pod in observed.pods:
        if _pod_digest(pod) != observed.digest:
            continue
        for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if status.get("name") != MODEL_BUILDER or terminated.get("exitCode") != 0:
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


def replica_failure(deployment: dict[str, Any] | None) -> Verdict | None:
    """QuotaExceeded / CreateFailed: the ReplicaSet cannot create pods (the Deployment controller copies
    the new ReplicaSet's ReplicaFailure condition, FailedCreate, onto the Deployment)."""
    failure = _conditions_of(deployment).get("ReplicaFailure") or {}
    if failure.get("status") != "True":
        return None
    text = one_line(str(failure.get("message") or failure.get("reason") or "FailedCreate"))
    reason = QUOTA_EXCEEDED if "exceeded quota" in text else CREATE_FAILED
    fix = "raise the namespace's ResourceQuota or lower the request" if reason == QUOTA_EXCEEDED else ""
    message = f"the ReplicaSet cannot create pods: {text}" + (f"; {fix}" if fix else "")
    return Verdict(AVAILABLE, FALSE, reason, message, failed=True)


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
        return Verdict(AVAILABLE, FALSE, problem.reason, problem.detail, failed=True)
    progressing = _conditions_of(deployment).get("Progressing", {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return Verdict(
            AVAILABLE,
            FALSE,
            "ProgressDeadlineExceeded",
            one_line(str(progressing.get("message", ""))),
            failed=True,
        )
    warning = placement_warning(md, observed.nodes)
    if warning is not None:
        return Verdict(AVAILABLE, FALSE, UNSCHEDULABLE, warning, failed=True)
    if progressing.get("reason") == "NewReplicaSetAvailable":
        # The rollout had finished, yet nothing serves now: pods failed after starting.
        return Verdict(AVAILABLE, FALSE, "NoReplicasAvailable", f"0 of {desired} pods available", failed=True)
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
        problem = Verdict(READY, FALSE, summary.reason, summary.detail, failed=True)
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
        return Verdict(READY, FALSE, ROLLOUT_STUCK, message, failed=True)
    return Verdict(READY, FALSE, problem.reason, f"{problem.message}; {serving}", failed=True)


def ready_verdict(md: ModelDeployment, observed: Observed, parts: list[Verdict]) -> Verdict:
    if observed.apply_errors:
        message = "; ".join(one_line(error) for error in observed.apply_errors)
        return Verdict(READY, FALSE, "ApplyFailed", message, failed=True)
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
        return Verdict(READY, FALSE, available.reason, available.message, failed=True)
    if repository.status is FALSE:
        return Verdict(READY, FALSE, repository.reason, repository.message)
    if available.status is not TRUE:
        return Verdict(READY, FALSE, available.reason, available.message)
    gap = _rollout_gap(md, observed)
    if gap is not None:
        return Verdict(READY, FALSE, "RollingOut", gap)
    serving = endpoints(md)
    # With Triton kept inside the pod (spec.api.exposeTriton false) the sidecar's API is the way in.
    url = serving.get("http") or serving["openai"]
    return Verdict(READY, TRUE, "Serving", f"model {serving['modelName']} is served at {url}")


def _phase(verdicts: dict[str, Verdict]) -> Phase:
    repository, available, autoscaler, ready = (verdicts[t] for t in CONDITION_TYPES)
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
    return auto_format(md.spec.model.task, device(md.spec))


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
    phase = _phase(verdicts)
    # What `kubectl get` shows: Ready's reason, or what degrades a serving model.
    headline = ready
    if ready.status is TRUE and verdicts[AUTOSCALER_READY].status is FALSE:
        headline = verdicts[AUTOSCALER_READY]
    return ModelDeploymentStatus(
        observed_generation=generation,
        phase=phase,
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
        reason=headline.reason,
        message=one_line(headline.message, limit=1024) if phase is not Phase.READY else None,
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
    old = _previous_conditions(previous).get(READY)
    new = _previous_conditions(current).get(READY)
    failing = _failing(current, new)
    if new is None or (
        old is not None
        and (old.status, old.reason, _failing(previous, old)) == (new.status, new.reason, failing)
    ):
        return []
    return [Transition(new.status, new.reason, new.message, "Warning" if failing else "Normal")]
