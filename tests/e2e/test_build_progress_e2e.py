"""A builder's progress through the real API server: the reconciler reads the builder container's log
(pods/log, which the API server proxies to the node's kubelet) and shows the reports in the status.

The kubelet is KWOK's: pods in BUILDER_LOG_NAMESPACE serve, as their model-builder's log, the CRI-format
file DevCluster.builder_log (KWOK's ClusterLogs), and a ModelDeployment named kwok-fault-building-* keeps
its builder init container running. So the reports below are fed from that file, in the exact lines the
builder writes (model_repo.progress.Report.to_line); everything between the file and the status is real.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from model_repo.progress import Report, Stage
from modeldeploy.progress_reader import PROGRESS_POLL_SECONDS
from modeldeploy.settings import RenderSettings
from modeldeploy_dev.devcluster import BUILDER_LOG_NAMESPACE, FAULT_PREFIX, DevCluster
from modeldeploy_dev.direct_reconciler import DirectReconciler
from modeldeploy_dev.harness import wait_until
from modeldeploy_dev.manual_clock import ManualClock

pytestmark = pytest.mark.cluster

NAME = f"{FAULT_PREFIX}building-bert"
GIB, MIB = 1024**3, 1024**2


def cri_lines(*lines: str) -> str:
    """Log lines as the container runtime writes them (what kubelets, and KWOK, read back)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
    return "".join(f"{stamp} stdout F {line}\n" for line in lines)


class Harness(DirectReconciler):
    def __init__(self, cluster: DevCluster) -> None:
        # The reconciler's clock, moved on by the test instead of waiting out the poll interval.
        self.clock = ManualClock(time.monotonic())
        super().__init__(
            cluster, RenderSettings(triton_image="triton:t", builder_image="builder:t"), self.clock
        )

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.cluster.kubectl(*args, "-n", BUILDER_LOG_NAMESPACE, input=input).stdout

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.kubectl("get", "modeldeployment", NAME, "-o", "json"))
        return body

    def reconcile(self) -> dict[str, Any]:
        self.run(self.reconciler.reconcile(self.body()))
        status: dict[str, Any] = self.body().get("status") or {}
        return status

    def feed(self, *reports: Report) -> None:
        text = cri_lines("modeldeploy: fetching hf://org/model", *(report.to_line() for report in reports))
        self.cluster.builder_log.write_text(text)
        self.clock.now += PROGRESS_POLL_SECONDS


def ready_of(status: dict[str, Any]) -> dict[str, Any]:
    (ready,) = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
    return ready


@pytest.fixture
def harness(cluster: DevCluster) -> Iterator[Harness]:
    cluster.kubectl("apply", "--server-side", "-f", "crds/")
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/modeldeployments.modeldeploy.dev", "--timeout=60s"
    )
    cluster.kubectl("create", "namespace", BUILDER_LOG_NAMESPACE)
    h = Harness(cluster)
    try:
        yield h
    finally:
        h.close()
        cluster.builder_log.unlink(missing_ok=True)
        cluster.kubectl(
            "delete", "namespace", BUILDER_LOG_NAMESPACE, "--wait=true", "--timeout=120s", check=False
        )


def test_progressing_then_stalled_download_through_pods_log(harness: Harness) -> None:
    spec = {"model": {"source": "hf://org/model", "task": "text-classification", "downloadStallSeconds": 120}}
    body = {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": NAME}}
    harness.kubectl("apply", "-f", "-", input=json.dumps({**body, "spec": spec}))
    harness.reconcile()
    pod = wait_until(
        "a pod whose builder runs",
        lambda: next(
            (
                p["metadata"]["name"]
                for p in json.loads(harness.kubectl("get", "pods", "-o", "json"))["items"]
                for s in p.get("status", {}).get("initContainerStatuses") or []
                if s["name"] == "model-builder" and "running" in s["state"]
            ),
            None,
        ),
        timeout=90,
        tolerate=(),
    )
    downloading = Report(
        Stage.DOWNLOAD, "downloading", percent=25.0, bytes_done=int(1.2 * GIB), bytes_total=int(4.8 * GIB),
        bytes_per_second=85 * MIB, eta_seconds=43.4, idle_seconds=0.0, file="model.safetensors",
    )  # fmt: skip
    harness.feed(downloading)
    # The API server proxies pods/log to KWOK, which serves the file: what `kubectl logs` shows too.
    assert downloading.to_line() in harness.kubectl("logs", pod, "-c", "model-builder")
    status = wait_until(
        "the report in the status",
        lambda: (found := harness.reconcile()).get("modelRepository", {}).get("progress") and found,
        timeout=90,
        tolerate=(),
    )
    progress = status["modelRepository"]["progress"]
    assert (progress["stage"], progress["percent"], progress["bytesDone"], progress["pod"]) == (
        "download",
        25.0,
        int(1.2 * GIB),
        pod,
    )
    assert progress["summary"] == "download 25% 43s"
    ready = ready_of(status)
    assert (ready["status"], ready["reason"]) == ("False", "Building")
    assert ready["message"].endswith("downloading 1.2 GiB of 4.8 GiB (25%), 85.0 MiB/s, about 43 s left")
    printed = harness.kubectl("get", "modeldeployment", NAME)
    assert "PROGRESS" in printed and "download 25% 43s" in printed, printed

    stalled = Report(
        Stage.DOWNLOAD, "downloading", percent=25.0, bytes_done=int(1.2 * GIB), bytes_total=int(4.8 * GIB),
        bytes_per_second=0.0, idle_seconds=125.0,
    )  # fmt: skip
    harness.feed(downloading, stalled)
    status = harness.reconcile()
    ready = ready_of(status)
    assert (ready["status"], ready["reason"], status["phase"]) == ("False", "DownloadStalled", "Failed")
    assert (
        "download stalled: downloading 1.2 GiB of 4.8 GiB (25%), 0 B/s, no bytes for 2 min"
        in ready["message"]
    )
    events = json.loads(harness.kubectl("get", "events", "-o", "json"))["items"]
    assert any(e["reason"] == "DownloadStalled" and e["type"] == "Warning" for e in events)
