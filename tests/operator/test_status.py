"""Status from what the children report: conditions, phase, replicas, and quiet recomputation."""

from __future__ import annotations

import copy
import json
from typing import Any

from md_fixtures import ACCURACY, md_of

from modeldeploy.api import ConditionStatus, ModelDeployment, ModelDeploymentStatus, Phase
from modeldeploy.digest import repository_digest
from modeldeploy.labels import MODEL_DIGEST_ANNOTATION
from modeldeploy.observations import Observed, pod_summary
from modeldeploy.status import comparable, compute_status, invalid_spec_status, transitions

T0, T1 = "2030-01-01T00:00:00Z", "2030-01-01T00:05:00Z"


def deployment(
    digest: str, replicas: int | None = 2, ready: int = 2, updated: int | None = None, generation: int = 1
) -> dict[str, Any]:
    spec: dict[str, Any] = {"template": {"metadata": {"annotations": {MODEL_DIGEST_ANNOTATION: digest}}}}
    if replicas is not None:
        spec["replicas"] = replicas
    total = replicas if replicas is not None else ready
    return {
        "metadata": {"name": "bert", "generation": generation},
        "spec": spec,
        "status": {
            "observedGeneration": generation,
            "replicas": total,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": total if updated is None else updated,
        },
    }


def pod(digest: str, ready: bool = True, builder: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if builder is not None:
        status["initContainerStatuses"] = [{"name": "model-builder", **builder}]
    return {
        "metadata": {"name": "bert-abc", "annotations": {MODEL_DIGEST_ANNOTATION: digest}},
        "status": status,
    }


def conditions(status: ModelDeploymentStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status.value, c.reason) for c in status.conditions or []}


def digest_of(md: ModelDeployment) -> str:
    return repository_digest(md.spec, md.metadata.name)


def test_a_healthy_fixed_deployment_is_ready() -> None:
    md = md_of({"replicas": 2})
    digest = digest_of(md)
    observed = Observed(digest=digest, deployment=deployment(digest), pods=[pod(digest), pod(digest)])
    status = compute_status(md, observed, None, T0)
    assert conditions(status) == {
        "ModelRepositoryReady": ("True", "Built"),
        "Available": ("True", "MinimumReplicasAvailable"),
        "AutoscalerReady": ("True", "FixedReplicas"),
        "ScalingReady": ("True", "FixedReplicas"),
        "Ready": ("True", "Serving"),
    }
    assert status.phase is Phase.READY
    assert (status.replicas, status.ready_replicas, status.replica_summary) == (2, 2, "2/2")
    assert status.selector == "app.kubernetes.io/component=inference-server,modeldeploy.dev/name=bert"
    assert status.endpoints is not None and status.endpoints.http == "http://bert.ml.svc:8000"
    assert status.endpoints.grpc == "bert.ml.svc:8001" and status.endpoints.model_name == "bert"
    assert status.model_repository is not None and status.model_repository.digest == digest
    assert status.model_repository.format is not None and status.model_repository.format.value == "python"
    assert status.observed_generation == md.metadata.generation
    assert all(c.observed_generation == md.metadata.generation for c in status.conditions or [])
    assert status.message is None


def test_recomputing_an_unchanged_status_keeps_transition_times_and_is_comparable_equal() -> None:
    md = md_of({})
    digest = digest_of(md)
    observed = Observed(digest=digest, deployment=deployment(digest, replicas=1, ready=1), pods=[pod(digest)])
    first = compute_status(md, observed, None, T0)
    second = compute_status(md, observed, first, T1)
    assert second == first
    assert transitions(first, second) == []
    # A status read back from the API server (JSON) compares equal to the computed one.
    assert comparable(first.dump()) == comparable(second)


def test_transition_time_moves_only_when_a_condition_status_changes() -> None:
    md = md_of({"replicas": 2})
    digest = digest_of(md)
    rolling = Observed(digest=digest, deployment=deployment(digest, ready=1, updated=1), pods=[pod(digest)])
    before = compute_status(md, rolling, None, T0)
    assert conditions(before)["Ready"] == ("False", "RollingOut")
    done = Observed(digest=digest, deployment=deployment(digest), pods=[pod(digest), pod(digest)])
    after = compute_status(md, done, before, T1)
    times = {c.type: c.last_transition_time for c in after.conditions or []}
    assert times["Ready"] == T1 and times["Available"] == T0
    changed = transitions(before, after)
    assert [(t.status.value, t.reason, t.event_type) for t in changed] == [("True", "Serving", "Normal")]
    assert comparable(before) != comparable(after)


def test_init_container_build_failure_is_reported_with_its_message() -> None:
    md = md_of({})
    digest = digest_of(md)
    failing = pod(
        digest,
        ready=False,
        builder={
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "message": "checkpoint needs trust_remote_code"}},
        },
    )
    observed = Observed(digest=digest, deployment=deployment(digest, replicas=1, ready=0), pods=[failing])
    status = compute_status(md, observed, None, T0)
    assert conditions(status)["ModelRepositoryReady"] == ("False", "BuildFailed")
    ready = next(c for c in status.conditions or [] if c.type == "Ready")
    assert ready.status is ConditionStatus.FALSE and "trust_remote_code" in ready.message
    assert status.phase is Phase.FAILED
    assert status.message == ready.message
    # One Event, for Ready: not one per condition.
    (event,) = transitions(None, status)
    assert (event.reason, event.event_type) == ("BuildFailed", "Warning")


def test_the_accuracy_gate_result_reaches_the_status_from_the_builders_termination_message() -> None:
    md = md_of({"triton": {"quantization": "int8"}})
    digest = digest_of(md)
    done = {"state": {"terminated": {"exitCode": 0, "message": json.dumps({"accuracy": ACCURACY})}}}
    observed = Observed(
        digest=digest, deployment=deployment(digest, replicas=1, ready=1), pods=[pod(digest, builder=done)]
    )
    status = compute_status(md, observed, None, T0)
    assert status.model_repository is not None and status.model_repository.accuracy is not None
    assert status.model_repository.accuracy.dump() == ACCURACY
    # A pod of an older repository, or a builder that left no message, contributes nothing.
    stale = Observed(digest=digest, deployment=deployment(digest), pods=[pod("0" * 16, builder=done)])
    assert compute_status(md, stale, None, T0).model_repository.accuracy is None  # type: ignore[union-attr]
    silent = {"state": {"terminated": {"exitCode": 0}}}
    quiet = Observed(digest=digest, deployment=deployment(digest), pods=[pod(digest, builder=silent)])
    assert compute_status(md, quiet, None, T0).model_repository.accuracy is None  # type: ignore[union-attr]


def test_a_failed_accuracy_gate_is_build_failed_with_metric_value_and_floor() -> None:
    md = md_of({"triton": {"quantization": "int8", "accuracyFloor": 0.999}})
    digest = digest_of(md)
    message = "accuracy gate failed: cosine_mean 0.9902 is below the floor 0.999 (int8 vs float32 ...)"
    failing = pod(digest, ready=False, builder={"state": {"terminated": {"exitCode": 2, "message": message}}})
    observed = Observed(digest=digest, deployment=deployment(digest, replicas=1, ready=0), pods=[failing])
    status = compute_status(md, observed, None, T0)
    assert conditions(status)["ModelRepositoryReady"] == ("False", "BuildFailed")
    assert status.message is not None and "cosine_mean 0.9902 is below the floor 0.999" in status.message


def test_cache_build_in_progress_then_failed() -> None:
    md = md_of({"cache": {"size": "1Gi"}})
    digest = digest_of(md)
    job = {"metadata": {"name": "bert-build-x"}, "status": {"active": 1}}
    claim = {"metadata": {"name": "bert-cache"}, "status": {"phase": "Pending"}}
    # An unbound claim with no Warning yet: waiting (Pending), not Building: the Job's pod cannot start.
    waiting = compute_status(md, Observed(digest=digest, build_job=job, cache_claim=claim), None, T0)
    assert conditions(waiting)["ModelRepositoryReady"] == ("False", "CacheClaimPending")
    assert waiting.phase is Phase.PENDING and waiting.reason == "CacheClaimPending"
    assert "bert-cache is Pending" in (waiting.message or "")
    bound = {"metadata": {"name": "bert-cache"}, "status": {"phase": "Bound"}}
    building = compute_status(md, Observed(digest=digest, build_job=job, cache_claim=bound), None, T0)
    assert conditions(building)["ModelRepositoryReady"] == ("False", "Building")
    assert conditions(building)["Available"] == ("False", "Pending")
    assert building.phase is Phase.BUILDING

    failed_job = {
        "metadata": {"name": "bert-build-x"},
        "status": {
            "failed": 3,
            "conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}],
        },
    }
    failed = compute_status(md, Observed(digest=digest, build_job=failed_job), building, T1)
    assert conditions(failed)["ModelRepositoryReady"] == ("False", "BuildFailed")
    assert failed.phase is Phase.FAILED


def test_old_repository_keeps_serving_while_the_new_one_builds() -> None:
    md = md_of({"cache": {"size": "1Gi"}, "replicas": 2})
    digest = digest_of(md)
    serving_old = deployment("0000000000000000")
    job = {"metadata": {"name": "bert-build-x"}, "status": {"active": 1}}
    status = compute_status(md, Observed(digest=digest, build_job=job, deployment=serving_old), None, T0)
    assert conditions(status)["Available"] == ("True", "MinimumReplicasAvailable")
    assert conditions(status)["Ready"] == ("False", "Building")
    assert status.phase is Phase.BUILDING

    done_job = {"metadata": {"name": "bert-build-x"}, "status": {"succeeded": 1}}
    # The Job is done but the Deployment has not switched yet: not Ready until the pods serve it.
    switching = compute_status(
        md, Observed(digest=digest, build_job=done_job, deployment=serving_old), None, T0
    )
    assert conditions(switching)["ModelRepositoryReady"] == ("True", "Built")
    assert conditions(switching)["Ready"][0] == "False"


def test_autoscaler_conditions_from_the_hpa() -> None:
    md = md_of({"autoscaling": {"minReplicas": 2, "maxReplicas": 4}})
    digest = digest_of(md)
    live = deployment(digest, replicas=2)
    no_metrics = {
        "status": {
            "conditions": [
                {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale"},
                {
                    "type": "ScalingActive",
                    "status": "False",
                    "reason": "FailedGetPodsMetric",
                    "message": "unable to get metric modeldeploy_queue_compute_ratio",
                },
            ]
        }
    }
    observed = Observed(digest=digest, deployment=live, autoscaler=no_metrics, pods=[pod(digest)])
    status = compute_status(md, observed, None, T0)
    assert conditions(status)["AutoscalerReady"] == ("False", "FailedGetPodsMetric")
    # The model serves; the autoscaler's trouble shows as Degraded, not as not-Ready.
    assert conditions(status)["Ready"] == ("True", "Serving")
    assert status.phase is Phase.DEGRADED
    assert status.replica_summary == "2/2"

    active = {
        "status": {
            "conditions": [
                {"type": "AbleToScale", "status": "True"},
                {"type": "ScalingActive", "status": "True"},
            ]
        }
    }
    healthy = compute_status(
        md, Observed(digest=digest, deployment=live, autoscaler=active, pods=[pod(digest)]), None, T0
    )
    assert conditions(healthy)["AutoscalerReady"] == ("True", "ScalingActive")
    assert healthy.phase is Phase.READY


def test_an_autoscaler_adding_or_removing_pods_of_the_current_revision_leaves_ready_true() -> None:
    """Scaling is not a rollout: while the HPA's new pods start (or old ones stop), the pods that run the
    current revision serve, so Ready stays True; a real rollout (pods of an older revision remain) and a
    fixed-replicas change still read RollingOut."""
    md = md_of({"autoscaling": {"minReplicas": 1, "maxReplicas": 3}})
    digest = digest_of(md)
    scaling_up = deployment(digest, replicas=3, ready=1)  # 3 pods of the current revision, 1 ready yet
    scaling_up["status"]["replicas"] = scaling_up["status"]["updatedReplicas"] = 3
    status = compute_status(md, Observed(digest=digest, deployment=scaling_up, pods=[pod(digest)]), None, T0)
    assert conditions(status)["Ready"] == ("True", "Serving")
    scaling_down = deployment(digest, replicas=1, ready=3)
    scaling_down["status"]["replicas"] = scaling_down["status"]["updatedReplicas"] = 3
    status = compute_status(
        md, Observed(digest=digest, deployment=scaling_down, pods=[pod(digest)]), None, T0
    )
    assert conditions(status)["Ready"] == ("True", "Serving")
    # A rollout under the autoscaler: 1 pod of the new revision among 3.
    rolling = deployment(digest, replicas=3, ready=3, updated=1)
    status = compute_status(md, Observed(digest=digest, deployment=rolling, pods=[pod(digest)]), None, T0)
    assert conditions(status)["Ready"] == ("False", "RollingOut")
    # Fixed replicas: the user asked for 3 and 1 is ready: still coming up.
    fixed = md_of({"replicas": 3})
    fixed_digest = digest_of(fixed)
    growing = deployment(fixed_digest, replicas=3, ready=1)
    observed = Observed(digest=fixed_digest, deployment=growing, pods=[pod(fixed_digest)])
    assert conditions(compute_status(fixed, observed, None, T0))["Ready"] == ("False", "RollingOut")


def test_keda_missing_and_scaled_to_zero() -> None:
    md = md_of({"autoscaling": {"engine": "keda", "minReplicas": 0, "maxReplicas": 2, "scaleToZero": True}})
    digest = digest_of(md)
    idle = deployment(digest, replicas=0, ready=0)
    missing = compute_status(md, Observed(digest=digest, deployment=idle, keda_installed=False), None, T0)
    assert conditions(missing)["AutoscalerReady"] == ("False", "KedaNotInstalled")
    scaled_object = {"status": {"conditions": [{"type": "Ready", "status": "True", "message": "ok"}]}}
    status = compute_status(md, Observed(digest=digest, deployment=idle, autoscaler=scaled_object), None, T0)
    assert conditions(status) == {
        "ModelRepositoryReady": ("Unknown", "NoPods"),
        "Available": ("True", "ScaledToZero"),
        "AutoscalerReady": ("True", "ScaledObjectReady"),
        "ScalingReady": ("True", "ScalingActive"),
        "Ready": ("True", "Serving"),
    }
    assert status.replica_summary == "0/0"


def test_refused_children_make_ready_false_with_the_api_message() -> None:
    md = md_of({})
    digest = digest_of(md)
    observed = Observed(
        digest=digest,
        deployment=deployment(digest, replicas=1, ready=1),
        pods=[pod(digest)],
        apply_errors=[
            "apply Deployment ml/bert: exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=1"
        ],
    )
    status = compute_status(md, observed, None, T0)
    assert conditions(status)["Ready"] == ("False", "ApplyFailed")
    assert "exceeded quota" in (status.message or "")


def test_invalid_spec_keeps_the_other_conditions_and_reports_every_message() -> None:
    md = md_of({})
    digest = digest_of(md)
    healthy = compute_status(
        md,
        Observed(digest=digest, deployment=deployment(digest, replicas=1, ready=1), pods=[pod(digest)]),
        None,
        T0,
    )
    messages = [
        "spec.autoscaling.metric cpu needs spec.resources.requests.cpu",
        "spec.triton.dtype must be auto",
    ]
    invalid = invalid_spec_status(healthy, 2, messages, T1)
    assert conditions(invalid)["Ready"] == ("False", "InvalidSpec")
    assert conditions(invalid)["Available"] == ("True", "MinimumReplicasAvailable")
    ready = next(c for c in invalid.conditions or [] if c.type == "Ready")
    assert ready.message == "; ".join(messages) and ready.observed_generation == 2
    assert invalid.observed_generation == 2 and invalid.phase is Phase.FAILED
    (transition,) = transitions(healthy, invalid)
    assert (transition.reason, transition.event_type) == ("InvalidSpec", "Warning")
    # Seen again: nothing new to write or announce.
    again = invalid_spec_status(invalid, 2, messages, "2031-01-01T00:00:00Z")
    assert comparable(again) == comparable(invalid) and transitions(invalid, again) == []


def test_pods_starting_is_progress_but_pods_lost_after_a_rollout_is_a_warning() -> None:
    md = md_of({})
    digest = digest_of(md)
    starting = deployment(digest, replicas=1, ready=0)
    starting["status"]["conditions"] = [
        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetCreated"}
    ]
    status = compute_status(md, Observed(digest=digest, deployment=starting), None, T0)
    assert conditions(status)["Available"] == ("False", "PodsStarting")
    assert [(t.reason, t.event_type) for t in transitions(None, status)] == [("PodsStarting", "Normal")]
    assert status.phase is Phase.DEPLOYING

    lost = deployment(digest, replicas=1, ready=0)
    lost["status"]["conditions"] = [
        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
    ]
    status = compute_status(md, Observed(digest=digest, deployment=lost), None, T0)
    assert conditions(status)["Available"] == ("False", "NoReplicasAvailable")
    assert [(t.reason, t.event_type) for t in transitions(None, status)] == [
        ("NoReplicasAvailable", "Warning")
    ]


def _full_pod(digest: str, ready: bool, builder: dict[str, Any] | None) -> dict[str, Any]:
    """`pod()` as the API server returns it: with everything the status does not read."""
    summary = pod(digest, ready, builder)
    full = copy.deepcopy(summary)
    full["metadata"].update({"uid": "p-1", "labels": {"a": "b"}, "managedFields": [{"manager": "kubelet"}]})
    full["metadata"]["annotations"]["other"] = "x"
    full["spec"] = {"containers": [{"name": "triton", "image": "triton:t"}], "nodeName": "cpu-0"}
    full["status"]["conditions"].insert(0, {"type": "PodScheduled", "status": "True"})
    full["status"]["containerStatuses"] = [{"name": "triton", "ready": ready}]
    full["status"].setdefault("initContainerStatuses", []).insert(0, {"name": "other-init", "state": {}})
    return full


def test_the_pod_summary_the_operator_keeps_gives_the_same_status() -> None:
    md = md_of({"replicas": 2})
    digest = digest_of(md)
    crash = {
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "message": "no such revision"}},
    }
    for pods in (
        [_full_pod(digest, True, None), _full_pod(digest, False, None)],
        [_full_pod(digest, False, crash)],
        [_full_pod("older", True, {"state": {"terminated": {"exitCode": 0}}})],
    ):
        summaries = [pod_summary(p) for p in pods]
        assert all("managedFields" not in s["metadata"] and "nodeName" not in s["spec"] for s in summaries)
        live = deployment(digest, replicas=2, ready=1)
        full = compute_status(md, Observed(digest=digest, deployment=live, pods=pods), None, T0)
        kept = compute_status(md, Observed(digest=digest, deployment=live, pods=summaries), None, T0)
        assert comparable(kept) == comparable(full)


def test_status_endpoints_show_the_openai_base_url_only_when_enabled() -> None:
    spec = {"model": {"source": "hf://org/chat", "task": "text-generation"}}
    for api, expected in (({}, None), ({"api": {"openai": {"enabled": True}}}, "http://bert.ml.svc:9000/v1")):
        md = md_of(spec, api)
        digest = digest_of(md)
        observed = Observed(digest=digest, deployment=deployment(digest), pods=[pod(digest)])
        status = compute_status(md, observed, None, T0)
        assert status.endpoints is not None and status.endpoints.openai == expected
