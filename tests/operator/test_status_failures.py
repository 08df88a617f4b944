"""The failure taxonomy of the status (docs/operator.md, "When a model is not Ready"), one test per
reason: the pure status function on the objects Kubernetes reports in each failure, shaped as the API
server returns them (the e2e tests produce each one for real on the local control plane)."""

from __future__ import annotations

from typing import Any

import pytest
from md_fixtures import md_of

from modeldeploy.api import ModelDeployment, ModelDeploymentStatus, Phase
from modeldeploy.digest import repository_digest
from modeldeploy.labels import MODEL_DIGEST_ANNOTATION
from modeldeploy.observations import Observed, node_summary, one_line, pod_summary
from modeldeploy.status import compute_status, transitions

T0 = "2030-01-01T00:00:00Z"
SCHEDULER_MESSAGE = (
    "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
    "2 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: 3 No preemption victims found."
)


def digest_of(md: ModelDeployment) -> str:
    return repository_digest(md.spec, md.metadata.name)


def deployment(
    digest: str,
    replicas: int = 1,
    available: int = 0,
    updated: int | None = None,
    total: int | None = None,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": "bert", "generation": 1},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"annotations": {MODEL_DIGEST_ANNOTATION: digest}}},
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas if total is None else total,
            "readyReplicas": available,
            "availableReplicas": available,
            "updatedReplicas": replicas if updated is None else updated,
            "conditions": conditions or [],
        },
    }


def pod(
    digest: str,
    name: str = "bert-1",
    *,
    ready: bool = False,
    scheduled: dict[str, Any] | None = None,
    triton: dict[str, Any] | None = None,
    builder: dict[str, Any] | None = None,
    memory_limit: str | None = None,
) -> dict[str, Any]:
    """A pod as the API server returns it (the status reads it through pod_summary() in the operator)."""
    triton_spec: dict[str, Any] = {"name": "triton", "image": "nvcr.io/nvidia/tritonserver:25.01-py3"}
    if memory_limit:
        triton_spec["resources"] = {"limits": {"memory": memory_limit, "nvidia.com/gpu": "1"}}
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if scheduled is not None:
        conditions.append({"type": "PodScheduled", **scheduled})
    status: dict[str, Any] = {"phase": "Running" if ready else "Pending", "conditions": conditions}
    if triton is not None:
        status["containerStatuses"] = [{"name": "triton", "image": triton_spec["image"], **triton}]
    if builder is not None:
        status["initContainerStatuses"] = [{"name": "model-builder", "image": "builder:t", **builder}]
    return {
        "metadata": {"name": name, "annotations": {MODEL_DIGEST_ANNOTATION: digest}, "uid": name},
        "spec": {
            "nodeName": "gpu-h100-0",
            "initContainers": [{"name": "model-builder", "image": "builder:t"}],
            "containers": [triton_spec],
        },
        "status": status,
    }


UNSCHEDULABLE = {"status": "False", "reason": "Unschedulable", "message": SCHEDULER_MESSAGE}
BUILT = {"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
TRITON_LOG = (
    "2026-12-02T12:00:00Z I 1 server.cc:674] loading: bert:1\n"
    "2026-12-02T12:00:01Z E 1 model_lifecycle.cc:654] failed to load 'bert' version 1: Invalid argument: "
    "unexpected inference output 'logits'\n"
    "2026-12-02T12:00:01Z I 1 server.cc:305] Waiting for in-flight requests to complete.\n"
    "error: creating server: Internal - failed to load all models"
)
CRASH_LOOP = {
    "state": {
        "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}
    },
    "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": TRITON_LOG}},
    "restartCount": 3,
}
OOM = {
    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
    "restartCount": 2,
}
IMAGE_PULL = {
    "state": {
        "waiting": {
            "reason": "ImagePullBackOff",
            "message": 'Back-off pulling image "nvcr.io/nvidia/tritonserver:25.01-py3"',
        }
    }
}


def status_of(md: ModelDeployment, observed: Observed) -> ModelDeploymentStatus:
    # Through the summary the operator keeps of each pod, as in the operator.
    observed.pods = [pod_summary(p) for p in observed.pods]
    observed.build_pods = [pod_summary(p) for p in observed.build_pods]
    return compute_status(md, observed, None, T0)


def ready_of(status: ModelDeploymentStatus) -> tuple[str, str, str]:
    ready = next(c for c in status.conditions or [] if c.type == "Ready")
    return ready.status.value, ready.reason, ready.message


def condition_reason(status: ModelDeploymentStatus, kind: str) -> str:
    return next(c.reason for c in status.conditions or [] if c.type == kind)


def assert_failure(status: ModelDeploymentStatus, reason: str, phase: Phase, *fragments: str) -> None:
    value, got, message = ready_of(status)
    assert (value, got) == ("False", reason), message
    assert status.phase is phase
    assert status.reason == reason
    assert status.message is not None and "\n" not in status.message
    for fragment in fragments:
        assert fragment in status.message, (fragment, status.message)
    (event,) = transitions(None, status)
    assert (event.reason, event.event_type) == (reason, "Warning")


def test_unschedulable_quotes_the_scheduler_and_counts_the_pods() -> None:
    md = md_of({"replicas": 3, "resources": {"gpus": 4, "gpuProduct": "NVIDIA-H100-80GB-HBM3"}})
    digest = digest_of(md)
    pods = [pod(digest, f"bert-{i}", scheduled=UNSCHEDULABLE) for i in range(2)]
    pods.append(pod(digest, "bert-2", scheduled={"status": "True"}, builder=BUILT, triton={"state": {}}))
    status = status_of(md, Observed(digest=digest, deployment=deployment(digest, replicas=3), pods=pods))
    assert_failure(status, "Unschedulable", Phase.FAILED, "2 of 3 pods cannot be scheduled", "Insufficient")
    # With the nodes known, what they tell is added to the scheduler's words (when they tell anything:
    # here the H100 node has the 4 GPUs asked for, they are just taken).
    nodes = [node_summary(node) for node in NODES]
    observed = Observed(digest=digest, deployment=deployment(digest, replicas=3), pods=pods, nodes=nodes)
    assert status_of(md, observed).message == status.message
    big = md_of({"replicas": 3, "resources": {"gpus": 16}})
    observed = Observed(digest=digest, deployment=deployment(digest, replicas=3), pods=pods, nodes=nodes)
    assert_failure(
        status_of(big, observed),
        "Unschedulable",
        Phase.FAILED,
        "Insufficient nvidia.com/gpu. preemption",
        "; no node has 16 allocatable nvidia.com/gpu (the most is 8 on gpu-a100-0)",
    )
    assert condition_reason(status, "Available") == "Unschedulable"
    # Nobody builds: not Building (the first complaint).
    assert condition_reason(status, "ModelRepositoryReady") == "NotStarted"


NODES = [
    {
        "metadata": {"name": "gpu-a100-0", "labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}},
    },
    {
        "metadata": {"name": "gpu-h100-0", "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}},
    },
    {"metadata": {"name": "cpu-0", "labels": {}}, "status": {"allocatable": {"cpu": "32"}}},
]


@pytest.mark.parametrize(
    ("resources", "fragment"),
    [
        ({"gpus": 1, "gpuProduct": "NVIDIA-B200"}, "no node has nvidia.com/gpu.product=NVIDIA-B200"),
        ({"gpus": 16}, "no node has 16 allocatable nvidia.com/gpu (the most is 8 on gpu-a100-0)"),
    ],
)
def test_early_warning_from_the_nodes_before_any_pod_is_scheduled(
    resources: dict[str, Any], fragment: str
) -> None:
    md = md_of({"resources": resources})
    digest = digest_of(md)
    nodes = [node_summary(node) for node in NODES]
    observed = Observed(digest=digest, deployment=deployment(digest), nodes=nodes)
    status = status_of(md, observed)
    assert_failure(status, "Unschedulable", Phase.FAILED, fragment)
    # Products the cluster has are named, so the fix is obvious.
    if "gpuProduct" in resources:
        assert "NVIDIA-A100-SXM4-80GB, NVIDIA-H100-80GB-HBM3" in (status.message or "")
    # A fitting request gets no warning; nodes not readable (None) neither.
    fits = md_of({"resources": {"gpus": 8, "gpuProduct": "NVIDIA-H100-80GB-HBM3"}})
    fine = status_of(fits, Observed(digest=digest_of(fits), deployment=deployment(digest), nodes=nodes))
    assert ready_of(fine)[1] == "PodsStarting" and fine.phase is Phase.DEPLOYING
    unknown = status_of(md, Observed(digest=digest, deployment=deployment(digest), nodes=None))
    assert ready_of(unknown)[1] == "PodsStarting"


def test_image_pull_failure_names_the_image() -> None:
    md = md_of({})
    digest = digest_of(md)
    failing = pod(digest, scheduled={"status": "True"}, builder=BUILT, triton=IMAGE_PULL)
    status = status_of(md, Observed(digest=digest, deployment=deployment(digest), pods=[failing]))
    assert_failure(
        status,
        "ImagePullFailed",
        Phase.FAILED,
        "1 of 1 pods cannot pull an image",
        "nvcr.io/nvidia/tritonserver:25.01-py3 (ImagePullBackOff)",
    )


def test_builder_image_pull_failure_is_not_building() -> None:
    md = md_of({})
    digest = digest_of(md)
    waiting = {"state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}
    failing = pod(digest, scheduled={"status": "True"}, builder=waiting)
    status = status_of(md, Observed(digest=digest, deployment=deployment(digest), pods=[failing]))
    assert_failure(status, "ImagePullFailed", Phase.FAILED, "cannot pull image builder:t (ErrImagePull)")
    assert condition_reason(status, "ModelRepositoryReady") == "NotStarted"


def test_model_load_failure_quotes_the_line_of_tritons_log_that_says_why() -> None:
    md = md_of({"replicas": 2})
    digest = digest_of(md)
    pods = [
        pod(digest, f"bert-{i}", scheduled={"status": "True"}, builder=BUILT, triton=CRASH_LOOP)
        for i in range(2)
    ]
    status = status_of(md, Observed(digest=digest, deployment=deployment(digest, replicas=2), pods=pods))
    assert_failure(
        status,
        "ModelLoadFailed",
        Phase.FAILED,
        "2 of 2 pods fail to load the model",
        "failed to load 'bert' version 1: Invalid argument: unexpected inference output 'logits'",
    )
    assert "Waiting for in-flight" not in (status.message or "")
    assert condition_reason(status, "ModelRepositoryReady") == "NotStarted"


def test_out_of_memory_names_the_limit_and_the_fix_and_wins_over_other_failures() -> None:
    md = md_of({"replicas": 3, "resources": {"limits": {"memory": "16Gi"}}})
    digest = digest_of(md)
    pods = [
        pod(digest, "bert-0", scheduled={"status": "True"}, builder=BUILT, triton=OOM, memory_limit="16Gi"),
        pod(digest, "bert-1", scheduled={"status": "True"}, builder=BUILT, triton=CRASH_LOOP),
        pod(digest, "bert-2", scheduled=UNSCHEDULABLE),
    ]
    status = status_of(md, Observed(digest=digest, deployment=deployment(digest, replicas=3), pods=pods))
    assert_failure(
        status,
        "OutOfMemory",
        Phase.FAILED,
        "1 of 3 pods run out of memory",
        "OOMKilled at its memory limit of 16Gi",
        "raise spec.resources.limits.memory",
        # The rest is counted, most specific first.
        "also 1 fail to load the model (ModelLoadFailed), 1 cannot be scheduled (Unschedulable)",
    )


def test_build_failure_in_the_init_container() -> None:
    md = md_of({})
    digest = digest_of(md)
    failed = {"state": {"terminated": {"exitCode": 2, "message": "Traceback ...\nValueError: no weights"}}}
    failing = pod(digest, scheduled={"status": "True"}, builder=failed)
    status = status_of(md, Observed(digest=digest, deployment=deployment(digest), pods=[failing]))
    assert_failure(status, "BuildFailed", Phase.FAILED, "model build failed", "ValueError: no weights")
    assert condition_reason(status, "ModelRepositoryReady") == "BuildFailed"


def test_building_only_while_a_builder_runs() -> None:
    md = md_of({})
    digest = digest_of(md)
    running = pod(digest, scheduled={"status": "True"}, builder={"state": {"running": {}}})
    status = status_of(md, Observed(digest=digest, deployment=deployment(digest), pods=[running]))
    assert ready_of(status)[:2] == ("False", "Building") and status.phase is Phase.BUILDING
    (event,) = transitions(None, status)
    assert event.event_type == "Normal"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            'pods "bert-5d8f-x" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=1, '
            "used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=0",
            "QuotaExceeded",
        ),
        (
            'pods "bert-5d8f-x" is forbidden: violates PodSecurity "restricted:latest": seccompProfile',
            "CreateFailed",
        ),
    ],
)
def test_replicaset_failed_create(message: str, reason: str) -> None:
    md = md_of({})
    digest = digest_of(md)
    failure = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message}
    live = deployment(digest, total=0, conditions=[failure])
    status = status_of(md, Observed(digest=digest, deployment=live))
    assert_failure(status, reason, Phase.FAILED, "the ReplicaSet cannot create pods", message[:40])


def test_cache_claim_pending_quotes_the_claims_warning() -> None:
    md = md_of({"cache": {"size": "5Gi", "storageClassName": "fast-rwx"}})
    digest = digest_of(md)
    claim = {
        "metadata": {"name": "bert-cache"},
        "spec": {"storageClassName": "fast-rwx"},
        "status": {"phase": "Pending"},
    }
    event = {
        "type": "Warning",
        "reason": "ProvisioningFailed",
        "message": 'storageclass.storage.k8s.io "fast-rwx" not found',
    }
    job = {"metadata": {"name": "bert-build-x"}, "status": {"active": 1}}
    observed = Observed(digest=digest, build_job=job, cache_claim=claim, claim_events=[event])
    status = status_of(md, observed)
    assert_failure(
        status,
        "CacheClaimPending",
        Phase.FAILED,
        "cache claim bert-cache (storageClassName 'fast-rwx') is Pending",
        'ProvisioningFailed: storageclass.storage.k8s.io "fast-rwx" not found',
    )
    # Before the PV controller has said why, the same reason is waiting (a Normal Event); once it has, the
    # failure gets its Warning although the reason did not change.
    waiting = status_of(md, Observed(digest=digest, build_job=job, cache_claim=claim))
    assert waiting.phase is Phase.PENDING and waiting.reason == "CacheClaimPending"
    assert [t.event_type for t in transitions(None, waiting)] == ["Normal"]
    assert [t.event_type for t in transitions(waiting, status)] == ["Warning"]
    assert transitions(status, status) == []


def test_builder_pod_of_the_cache_job_failing_is_named() -> None:
    md = md_of({"cache": {"size": "5Gi"}})
    digest = digest_of(md)
    bound = {"metadata": {"name": "bert-cache"}, "status": {"phase": "Bound"}}
    job = {"metadata": {"name": "bert-build-x"}, "status": {"active": 1}}
    builder = pod(digest, "bert-build-x-abc", scheduled={"status": "True"})
    builder["spec"] = {"containers": [{"name": "model-builder", "image": "builder:t"}]}
    builder["status"]["containerStatuses"] = [{"name": "model-builder", "image": "builder:t", **OOM}]
    observed = Observed(digest=digest, build_job=job, cache_claim=bound, build_pods=[builder])
    status = status_of(md, observed)
    assert_failure(status, "OutOfMemory", Phase.FAILED, "build Job bert-build-x: 1 of 1 builder pods")


def test_rollout_stuck_says_the_previous_revision_still_serves() -> None:
    md = md_of({"replicas": 2, "resources": {"gpus": 1, "gpuProduct": "NVIDIA-B200"}})
    digest = digest_of(md)
    # maxSurge 1, maxUnavailable 0: one new pod that cannot be scheduled, both old ones still serving.
    live = deployment(digest, replicas=2, available=2, updated=1, total=3)
    pods = [
        pod(digest, "bert-old-0", ready=True, scheduled={"status": "True"}),
        pod(digest, "bert-old-1", ready=True, scheduled={"status": "True"}),
        pod(digest, "bert-new-0", scheduled=UNSCHEDULABLE),
    ]
    status = status_of(md, Observed(digest=digest, deployment=live, pods=pods))
    assert_failure(
        status,
        "RolloutStuck",
        Phase.DEGRADED,
        "the new revision cannot come up (Unschedulable): 1 of 3 pods cannot be scheduled",
        "the previous revision still serves (2 of 2 pods ready)",
    )
    assert condition_reason(status, "Available") == "MinimumReplicasAvailable"
    # The same, read from our own apply's response: the Deployment controller has not counted the new
    # template yet, but its first pod is already refused.
    applied = deployment(digest, replicas=2, available=2)
    applied["metadata"]["generation"] = 2
    early = status_of(md, Observed(digest=digest, deployment=applied, pods=pods))
    assert ready_of(early)[1] == "RolloutStuck" and early.phase is Phase.DEGRADED


def test_some_pods_failing_outside_a_rollout_is_degraded_with_the_failure_itself() -> None:
    md = md_of({"replicas": 2})
    digest = digest_of(md)
    live = deployment(digest, replicas=2, available=1)
    pods = [
        pod(digest, "bert-0", ready=True, scheduled={"status": "True"}, builder=BUILT),
        pod(digest, "bert-1", scheduled={"status": "True"}, builder=BUILT, triton=CRASH_LOOP),
    ]
    status = status_of(md, Observed(digest=digest, deployment=live, pods=pods))
    assert_failure(
        status, "ModelLoadFailed", Phase.DEGRADED, "1 of 2 pods fail to load", "1 of 2 pods still serve"
    )


def test_one_line_keeps_the_telling_line_and_bounds_the_length() -> None:
    assert one_line(TRITON_LOG).startswith("2026-12-02T12:00:01Z E 1 model_lifecycle.cc:654] failed to load")
    glog = "I1202 loading\nE1202 12:00:01.000 1 model.cc:1] failed to load 'x'\nE1202 all models failed"
    assert one_line(glog) == "E1202 12:00:01.000 1 model.cc:1] failed to load 'x'"
    traceback = 'Traceback (most recent call last):\n  File "build.py", line 3\nValueError: no weights'
    assert one_line(traceback) == "ValueError: no weights"
    assert one_line("a\n\n  b  c \n") == "b c"
    assert len(one_line("x" * 5000)) == 400


def test_a_failed_build_of_a_new_revision_says_the_previous_one_still_serves() -> None:
    md = md_of({"cache": {"size": "5Gi"}, "replicas": 2})
    digest = digest_of(md)
    serving_old = deployment("0000000000000000", replicas=2, available=2)
    failed_job = {
        "metadata": {"name": "bert-build-x"},
        "status": {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]},
    }
    status = status_of(md, Observed(digest=digest, build_job=failed_job, deployment=serving_old))
    assert_failure(
        status,
        "BuildFailed",
        Phase.DEGRADED,
        "build Job bert-build-x failed: BackoffLimitExceeded",
        "the previous revision still serves (2 of 2 pods available)",
    )
