"""What the owned objects say: pods (their failures, in the taxonomy of docs/operator.md), nodes, Jobs
and the builder's reports, read into plain values. The verdicts on conditions (status.py) judge these.

Pure: the reconciler gathers the objects into `Observed`; nothing here reads the API server.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from model_repo.progress import STALLED_MESSAGE, Report, Stage
from modeldeploy.api import AccuracyStatus, ModelDeployment, ProgressStatus
from modeldeploy.labels import (
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    MODEL_BUILDER,
    MODEL_DIGEST_ANNOTATION,
)

TRITON_CONTAINER = "triton"

# The failure taxonomy (docs/operator.md, "When a model is not Ready"): the reasons that need someone to
# act. Their order is their specificity: when pods fail in several ways, the status names the first and
# counts the rest.
OUT_OF_MEMORY = "OutOfMemory"
DOWNLOAD_STALLED = "DownloadStalled"
BUILD_FAILED = "BuildFailed"
MODEL_LOAD_FAILED = "ModelLoadFailed"
IMAGE_PULL_FAILED = "ImagePullFailed"
CREATE_FAILED = "CreateFailed"
UNSCHEDULABLE = "Unschedulable"
POD_FAILURE_ORDER = (
    OUT_OF_MEMORY,
    DOWNLOAD_STALLED,
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


@dataclass
class Observed:
    """What the reconciler saw (and did) this round; the only input of the status besides the spec."""

    digest: str
    deployment: dict[str, Any] | None = None
    build_job: dict[str, Any] | None = None
    cache_claim: dict[str, Any] | None = None
    autoscaler: dict[str, Any] | None = None
    # The HorizontalPodAutoscaler KEDA made for our ScaledObject (its ScalingLimited says "at maximum").
    keda_hpa: dict[str, Any] | None = None
    keda_installed: bool = True
    pods: list[dict[str, Any]] = field(default_factory=list)
    # The build Job's pods (with a cache), as pod_summary() keeps them.
    build_pods: list[dict[str, Any]] = field(default_factory=list)
    # The nodes, as node_summary() keeps them; None: not known (not read, or not readable).
    nodes: list[dict[str, Any]] | None = None
    # Warning Events of the cache claim, newest last (read only while the claim is unbound).
    claim_events: list[dict[str, Any]] = field(default_factory=list)
    # The latest progress report of a running builder (read from its log every few seconds).
    build_report: BuilderReport | None = None
    # Children the API server refused (e.g. an admission webhook or quota); shown, then retried.
    apply_errors: list[str] = field(default_factory=list)


def conditions_of(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


def name_of(obj: dict[str, Any] | None) -> str:
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
    conditions = conditions_of(job)
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
        detail = _terminated_detail(crashed)
        if detail.startswith(STALLED_MESSAGE):
            return PodProblem(DOWNLOAD_STALLED, f"the checkpoint's {detail}")
        return PodProblem(BUILD_FAILED, f"model build failed: {detail}")
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
    scheduled = conditions_of(dict(pod)).get("PodScheduled") or {}
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        found.append(PodProblem(UNSCHEDULABLE, one_line(str(scheduled.get("message") or "no node fits"))))
    if not found:
        return None
    return min(found, key=lambda problem: POD_FAILURE_ORDER.index(problem.reason))


_WHAT = {
    OUT_OF_MEMORY: "run out of memory",
    DOWNLOAD_STALLED: "stop receiving the checkpoint",
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


def running_builders(pods: list[dict[str, Any]]) -> list[str]:
    """The pods whose builder runs now (an init container, or a build Job's container), by name."""
    names = []
    for pod in pods:
        status = pod.get("status") or {}
        for container in [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]:
            if container.get("name") == MODEL_BUILDER and "running" in (container.get("state") or {}):
                names.append(name_of(pod))
    return sorted(names)


@dataclass(frozen=True)
class BuilderReport:
    """A running builder's latest progress report (read from its log), and its pod."""

    pod: str
    report: Report

    def stalled(self, limit_seconds: float) -> bool:
        """The builder reported a stall, or no byte for `limit_seconds` (0: never stalled)."""
        if self.report.stage is Stage.STALLED:
            return True
        idle = self.report.idle_seconds
        return bool(limit_seconds) and self.report.stage is Stage.DOWNLOAD and (idle or 0) >= limit_seconds

    def as_status(self) -> ProgressStatus:
        report = self.report
        return ProgressStatus(
            stage=report.stage.value,
            percent=None if report.percent is None else round(report.percent, 1),
            bytes_done=report.bytes_done,
            bytes_total=report.bytes_total,
            bytes_per_second=None if report.bytes_per_second is None else round(report.bytes_per_second),
            eta_seconds=None if report.eta_seconds is None else round(report.eta_seconds),
            message=one_line(report.describe(), limit=1024),
            summary=report.summary()[:64],
            pod=self.pod,
        )


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


def pod_is_ready(pod: dict[str, Any]) -> bool:
    return conditions_of(pod).get("Ready", {}).get("status") == "True"


def build_accuracy(observed: Observed) -> AccuracyStatus | None:
    """The accuracy gate's result, from the termination message the builder left: the init container of a
    current pod, or (with a cache) the build Job's container."""
    builders = [
        (pod, "initContainerStatuses") for pod in observed.pods if pod_digest(pod) == observed.digest
    ] + [(pod, "containerStatuses") for pod in observed.build_pods]
    for pod, statuses in builders:
        for status in (pod.get("status") or {}).get(statuses) or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if status.get("name") != MODEL_BUILDER or terminated.get("exitCode") != 0:
                continue
            try:
                accuracy = json.loads(terminated.get("message") or "{}").get("accuracy")
                return AccuracyStatus.model_validate(accuracy) if accuracy else None
            except (ValueError, AttributeError):  # a message from an older builder, or none
                return None
    return None


def pod_digest(pod: dict[str, Any]) -> str | None:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(MODEL_DIGEST_ANNOTATION)
    return str(value) if value else None
