"""A running builder's progress in the status: the reconciler reads the builder's log (pods/log) no more
often than every few seconds, shows the latest report in status.modelRepository.progress and the Ready
message, and fails a stalled download with its own reason. On the in-memory FakeCluster, whose
`logs` hold what the builder wrote (the e2e test reads a real log through the API server)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from reconcile_contract import SETTINGS, SOURCE

from model_repo.progress import Report, Stage
from modeldeploy.kinds import DEPLOYMENT, JOB, MODEL_DEPLOYMENT, PERSISTENT_VOLUME_CLAIM, POD
from modeldeploy.labels import MODEL_BUILDER, MODEL_DIGEST_ANNOTATION
from modeldeploy.progress_reader import PROGRESS_POLL_SECONDS
from modeldeploy.reconcile import JOB_NAME_LABEL, Outcome, Reconciler
from modeldeploy_dev.fakecluster import FakeCluster
from modeldeploy_dev.manual_clock import ManualClock

NAMESPACE = "models"
GIB = 1024**3
MIB = 1024**2


class Builds:
    def __init__(self) -> None:
        self.cluster = FakeCluster()
        self.clock = ManualClock(100.0)
        self.reconciler = Reconciler(self.cluster, SETTINGS, clock=self.clock)

    def create(self, name: str, **model: Any) -> None:
        spec: dict[str, Any] = {"model": {"source": SOURCE, "task": "text-classification", **model}}
        self.cluster.create_model_deployment(NAMESPACE, name, spec)

    def reconcile(self, name: str) -> Outcome:
        body = self.cluster.body(MODEL_DEPLOYMENT, NAMESPACE, name)
        return asyncio.run(self.reconciler.reconcile(body))

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.cluster.body(MODEL_DEPLOYMENT, NAMESPACE, name)["status"]
        return status

    def ready(self, name: str) -> dict[str, Any]:
        (ready,) = [c for c in self.status(name)["conditions"] if c["type"] == "Ready"]
        return ready

    def builder_pod(
        self, name: str, pod: str, builder_state: dict[str, Any], in_job: str | None = None
    ) -> None:
        """A pod whose builder (the init container; the container, in a build Job) is in this state."""
        if in_job is None:
            template = self.cluster.body(DEPLOYMENT, NAMESPACE, name)["spec"]["template"]
            labels = template["metadata"]["labels"]
            annotations = template["metadata"]["annotations"]
            statuses = {"initContainerStatuses": [{"name": MODEL_BUILDER, "state": builder_state}]}
        else:
            labels = {JOB_NAME_LABEL: in_job}
            annotations = {}
            statuses = {"containerStatuses": [{"name": MODEL_BUILDER, "state": builder_state}]}
        self.cluster.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod,
                    "namespace": NAMESPACE,
                    "labels": labels,
                    "annotations": annotations,
                },
                "spec": {"containers": [{"name": "triton", "image": "triton"}]},
            }
        )
        self.cluster.set_status(POD, NAMESPACE, pod, statuses)

    def log(self, pod: str, *reports: Report, noise: str = "modeldeploy: fetching hf://org/model\n") -> None:
        self.cluster.logs[(NAMESPACE, pod, MODEL_BUILDER)] = noise + "".join(
            r.to_line() + "\n" for r in reports
        )


def downloading(done: int, total: int, rate: float, idle: float = 0.0) -> Report:
    return Report(
        Stage.DOWNLOAD, "downloading", percent=100 * done / total, bytes_done=done, bytes_total=total,
        bytes_per_second=rate, eta_seconds=(total - done) / rate if rate else None, idle_seconds=idle,
        file="model.safetensors",
    )  # fmt: skip


RUNNING = {"running": {"startedAt": "2030-01-01T00:00:00Z"}}


@pytest.fixture
def builds() -> Builds:
    return Builds()


def test_a_progressing_download_is_in_the_status_and_the_ready_message(builds: Builds) -> None:
    builds.create("bert")
    builds.reconcile("bert")
    builds.builder_pod("bert", "bert-abc", RUNNING)
    builds.log(
        "bert-abc", Report(Stage.DOWNLOAD, "fetching"), downloading(int(1.2 * GIB), int(4.8 * GIB), 85 * MIB)
    )
    outcome = builds.reconcile("bert")
    progress = builds.status("bert")["modelRepository"]["progress"]
    assert progress == {
        "stage": "download",
        "percent": 25.0,
        "bytesDone": int(1.2 * GIB),
        "bytesTotal": int(4.8 * GIB),
        "bytesPerSecond": 85 * MIB,
        "etaSeconds": 43,
        "message": "downloading 1.2 GiB of 4.8 GiB (25%), 85.0 MiB/s, about 43 s left",
        "summary": "download 25% 43s",
        "pod": "bert-abc",
    }
    ready = builds.ready("bert")
    assert (ready["status"], ready["reason"]) == ("False", "Building")
    assert ready["message"].endswith(
        "pods are building repository " + _digest(builds) + ": " + progress["message"]
    )
    assert builds.status("bert")["phase"] == "Building"
    # Nothing else triggers a reconciliation while bytes arrive: the queue looks again in a few seconds.
    assert outcome.retry_after == PROGRESS_POLL_SECONDS


def _digest(builds: Builds) -> str:
    template = builds.cluster.body(DEPLOYMENT, NAMESPACE, "bert")["spec"]["template"]
    return str(template["metadata"]["annotations"][MODEL_DIGEST_ANNOTATION])


def test_the_log_is_read_at_most_every_few_seconds_and_later_stages_follow(builds: Builds) -> None:
    builds.create("bert")
    builds.reconcile("bert")
    builds.builder_pod("bert", "bert-abc", RUNNING)
    builds.log("bert-abc", downloading(100 * MIB, 400 * MIB, 10 * MIB))
    builds.reconcile("bert")
    assert builds.cluster.reads["pods/log"] == 1
    builds.log(
        "bert-abc", Report(Stage.OPTIMISE, "measuring the optimised model against float32 (accuracy gate)")
    )
    builds.clock.now += PROGRESS_POLL_SECONDS / 2
    builds.reconcile("bert")
    assert builds.cluster.reads["pods/log"] == 1, "read again before the poll interval"
    assert builds.status("bert")["modelRepository"]["progress"]["stage"] == "download"
    builds.clock.now += PROGRESS_POLL_SECONDS / 2
    builds.reconcile("bert")
    assert builds.cluster.reads["pods/log"] == 2
    progress = builds.status("bert")["modelRepository"]["progress"]
    assert (progress["stage"], progress["summary"]) == ("optimise", "optimise 5/7")
    assert builds.ready("bert")["message"].endswith(
        "measuring the optimised model against float32 (accuracy gate)"
    )


def _building_without_bytes(builds: Builds, stall_seconds: int, idle: float) -> None:
    """bert's builder running with downloadStallSeconds ``stall_seconds``, its log at 100 of 400 MiB and no
    bytes for ``idle`` s: still Building."""
    builds.create("bert", downloadStallSeconds=stall_seconds)
    builds.reconcile("bert")
    builds.builder_pod("bert", "bert-abc", RUNNING)
    builds.log("bert-abc", downloading(100 * MIB, 400 * MIB, 0.0, idle=idle))
    builds.reconcile("bert")
    assert builds.ready("bert")["reason"] == "Building"


def test_a_download_without_bytes_for_the_limit_is_download_stalled(builds: Builds) -> None:
    _building_without_bytes(builds, stall_seconds=60, idle=59)
    builds.log("bert-abc", downloading(100 * MIB, 400 * MIB, 0.0, idle=61))
    builds.clock.now += PROGRESS_POLL_SECONDS
    builds.reconcile("bert")
    ready = builds.ready("bert")
    assert (ready["status"], ready["reason"]) == ("False", "DownloadStalled")
    assert (
        "download stalled: downloading 100 MiB of 400 MiB (25%), 0 B/s, no bytes for 61 s" in ready["message"]
    )
    assert "spec.model.downloadStallSeconds" in ready["message"]
    assert builds.status("bert")["phase"] == "Failed"
    warnings = [e for e in builds.cluster.events if e["reason"] == "DownloadStalled"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"


def test_a_stall_limit_of_zero_never_stalls_but_the_builders_own_verdict_stands(builds: Builds) -> None:
    _building_without_bytes(builds, stall_seconds=0, idle=86400)
    stalled = Report(
        Stage.STALLED, "download stalled: no bytes for 5 min (limit 5 min) after 100 MiB of 400 MiB"
    )
    builds.log("bert-abc", stalled)
    builds.clock.now += PROGRESS_POLL_SECONDS
    builds.reconcile("bert")
    ready = builds.ready("bert")
    assert ready["reason"] == "DownloadStalled"
    assert (
        "the checkpoint's download stalled: no bytes for 5 min (limit 5 min) after 100 MiB"
        in ready["message"]
    )


def test_a_builder_that_exited_on_a_stall_is_download_stalled(builds: Builds) -> None:
    builds.create("bert")
    builds.reconcile("bert")
    message = "download stalled: no bytes for 5 min (limit 5 min) after 1.0 GiB of 4.0 GiB"
    builds.builder_pod(
        "bert", "bert-abc", {"terminated": {"exitCode": 2, "reason": "Error", "message": message}}
    )
    outcome = builds.reconcile("bert")
    ready = builds.ready("bert")
    assert (ready["reason"], builds.status("bert")["phase"]) == ("DownloadStalled", "Failed")
    assert ready["message"] == f"1 of 1 pods stop receiving the checkpoint: the checkpoint's {message}"
    assert "progress" not in builds.status("bert")["modelRepository"]
    assert outcome.retry_after is None, "no builder runs: nothing to poll"
    assert builds.cluster.reads["pods/log"] == 0


def test_an_unreadable_log_leaves_building_without_progress(builds: Builds) -> None:
    builds.create("bert")
    builds.reconcile("bert")
    builds.builder_pod(
        "bert", "bert-abc", RUNNING
    )  # no log: the fake answers 400, as for a waiting container
    builds.reconcile("bert")
    ready = builds.ready("bert")
    assert (ready["reason"], ready["message"]) == (
        "Building",
        f"pods are building repository {_digest(builds)}",
    )
    assert "progress" not in builds.status("bert")["modelRepository"]


def test_the_cache_jobs_builder_reports_too(builds: Builds) -> None:
    builds.cluster.create_model_deployment(
        NAMESPACE,
        "cached",
        {"model": {"source": SOURCE, "task": "text-classification"}, "cache": {"size": "1Gi"}},
    )
    builds.reconcile("cached")
    builds.cluster.set_status(PERSISTENT_VOLUME_CLAIM, NAMESPACE, "cached-cache", {"phase": "Bound"})
    (job,) = builds.cluster.names(JOB, NAMESPACE)
    builds.builder_pod("cached", f"{job}-xyz", RUNNING, in_job=job)
    builds.log(f"{job}-xyz", downloading(3 * GIB, 4 * GIB, 100 * MIB))
    builds.reconcile("cached")
    ready = builds.ready("cached")
    assert ready["reason"] == "Building"
    assert ready["message"].endswith("downloading 3.0 GiB of 4.0 GiB (75%), 100 MiB/s, about 10 s left")
    assert builds.status("cached")["modelRepository"]["progress"]["summary"] == "download 75% 10s"
    # Built: the progress goes.
    builds.cluster.set_status(
        JOB, NAMESPACE, job, {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    )
    builds.reconcile("cached")
    assert "progress" not in builds.status("cached")["modelRepository"]


def test_the_stall_limit_reaches_the_builder_and_names_a_new_build() -> None:
    from md_fixtures import md_of

    from modeldeploy.digest import repository_digest
    from modeldeploy.manifests.common import builder_arguments

    plain = md_of({"model": {"source": SOURCE, "task": "text-classification"}})
    limited = md_of({"model": {"source": SOURCE, "task": "text-classification", "downloadStallSeconds": 60}})
    assert "--stall-timeout" not in builder_arguments(plain.spec, "bert", "/out")
    args = builder_arguments(limited.spec, "bert", "/out")
    assert args[args.index("--stall-timeout") + 1] == "60"
    assert repository_digest(plain.spec, "bert") != repository_digest(limited.spec, "bert")
