"""With a cache, the accuracy gate's result reaches status.modelRepository.accuracy from the build Job's
pod (its builder's termination message), and stays there once that pod is gone. On the in-memory
FakeCluster (modeldeploy_dev.fakecluster), with the Job controller's and kubelet's writes played by hand."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from md_fixtures import ACCURACY
from reconcile_contract import SETTINGS, SOURCE

from modeldeploy.kinds import JOB, MODEL_DEPLOYMENT, PERSISTENT_VOLUME_CLAIM, POD
from modeldeploy.labels import MODEL_BUILDER
from modeldeploy.reconcile import JOB_NAME_LABEL, Reconciler
from modeldeploy_dev.fakecluster import FakeCluster

NAMESPACE = "models"


def _reconcile(cluster: FakeCluster, reconciler: Reconciler, name: str) -> dict[str, Any]:
    asyncio.run(reconciler.reconcile(cluster.body(MODEL_DEPLOYMENT, NAMESPACE, name)))
    status: dict[str, Any] = cluster.body(MODEL_DEPLOYMENT, NAMESPACE, name).get("status") or {}
    return status


def test_the_build_jobs_accuracy_reaches_the_status_and_stays() -> None:
    cluster = FakeCluster()
    reconciler = Reconciler(cluster, SETTINGS)
    spec = {
        "model": {"source": SOURCE, "task": "text-classification"},
        "cache": {"size": "1Gi"},
        "triton": {"quantization": "int8"},
    }
    cluster.create_model_deployment(NAMESPACE, "gated", spec)
    _reconcile(cluster, reconciler, "gated")
    (job,) = cluster.names(JOB, NAMESPACE)
    cluster.set_status(PERSISTENT_VOLUME_CLAIM, NAMESPACE, "gated-cache", {"phase": "Bound"})
    # The builder's pod ran to completion and left its termination message; then the Job completed.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{job}-x", "namespace": NAMESPACE}}
    pod["metadata"]["labels"] = {JOB_NAME_LABEL: job}  # type: ignore[index]
    cluster.create(pod, manager="kube-controller-manager")
    message = json.dumps({"accuracy": ACCURACY})
    terminated = {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}}
    cluster.set_status(
        POD,
        NAMESPACE,
        f"{job}-x",
        {"phase": "Succeeded", "containerStatuses": [{"name": MODEL_BUILDER, "state": terminated}]},
    )
    cluster.set_status(
        JOB, NAMESPACE, job, {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    )

    status = _reconcile(cluster, reconciler, "gated")
    assert status["modelRepository"]["accuracy"] == ACCURACY

    cluster.delete_now(POD, NAMESPACE, f"{job}-x")  # e.g. the Job's pods cleaned up
    status = _reconcile(cluster, reconciler, "gated")
    assert status["modelRepository"]["accuracy"] == ACCURACY, "the accuracy left with the pod"

    # Another repository (another digest) does not inherit it.
    cluster.create_model_deployment(
        NAMESPACE, "gated", {**spec, "triton": {"quantization": "int8", "accuracyFloor": 0.9}}
    )
    status = _reconcile(cluster, reconciler, "gated")
    assert status["modelRepository"].get("accuracy") is None
