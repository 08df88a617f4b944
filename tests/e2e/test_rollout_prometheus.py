"""Canary rollouts end to end: the operator on the local control plane, a real Prometheus (built by
tests/cluster/build.sh from its Go module) scraping real tritonservers, and the operator's analysis reading
Prometheus's query API.

KWOK runs the pods without containers, so the Triton metrics come from tritonserver processes on this
machine, one per role, each serving the ModelDeployment's model name (a numpy Python-backend model; the
stable and good ones sleep 10 ms a request, the slow one 60 ms). Prometheus scrapes them as the pods they
stand for: a file_sd target per pod, labelled with the KWOK pod's `namespace` and `pod`, exactly the
labels a Kubernetes scrape puts on a real pod's series. A load thread keeps requests flowing to every server.

0. The query client reads each revision's figures (no control plane needed).
1. A good canary (two steps) is promoted; the operator is SIGKILLed once the first step has started,
   and the new process resumes at the same step with the same stepStartedAt.
2. A slow canary breaks maxLatencyRatio and is rolled back within one analysis interval after its first
   full interval: the canary Deployment is gone, Ready stays True, the Canary condition and a Warning
   Event name the metric, its value and the threshold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model_repo.triton import TritonServer
from modeldeploy.api import AnalysisOutcome, CanaryAnalysis, RevisionMetrics
from modeldeploy.prometheus import PrometheusClient, RevisionSelector
from modeldeploy.rollout import judge
from modeldeploy_dev.devcluster import DevCluster
from modeldeploy_dev.harness import (
    ChartRbac,
    KubeApi,
    OperatorProcess,
    chart_rbac_installed,
    condition,
    events_of,
    is_ready,
    model_deployment,
    models_namespace,
    pods_of,
    running_ready,
    wait_until,
)
from modeldeploy_dev.prometheus import PrometheusServer

pytestmark = pytest.mark.cluster

NAME = "ranker"
INTERVAL = 10
# Every model sleeps: sub-millisecond means are noise on a loaded machine (a good canary measured 1.59x the
# stable one at 957 vs 600 µs), a fixed 10 ms keeps the good ratio near 1 and the slow one near 6.
BASE_MS = 10
SLOW_MS = 60
MODEL_PY = """
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.delay = float(parameters.get("delay_ms", {}).get("string_value", "0")) / 1000

    def execute(self, requests):
        responses = []
        for request in requests:
            if self.delay:
                time.sleep(self.delay)
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (data * 2).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""
CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [{{ name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] }}]
output [{{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 4 ] }}]
instance_group [{{ kind: KIND_CPU, count: 1 }}]
parameters: {{ key: "delay_ms", value: {{ string_value: "{delay}" }} }}
"""


def write_repository(root: Path, delay_ms: int) -> Path:
    model = root / NAME
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(MODEL_PY)
    (model / "config.pbtxt").write_text(CONFIG.format(name=NAME, delay=delay_ms))
    return root


class Load(threading.Thread):
    """Requests to every server, one after another, until stopped."""

    def __init__(self, servers: list[TritonServer]) -> None:
        super().__init__(daemon=True)
        self.servers = servers
        self.stopped = threading.Event()
        self.body = json.dumps(
            {"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        ).encode()

    def run(self) -> None:
        while not self.stopped.is_set():
            for server in self.servers:
                request = urllib.request.Request(
                    f"http://{server.http_url}/v2/models/{NAME}/infer",
                    data=self.body,
                    headers={"Content-Type": "application/json"},
                )
                # A refused request (a server restarting) is no reason to stop the load.
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(request, timeout=5).read()
            time.sleep(0.02)


class Prometheus(PrometheusServer):
    def point(self, pods: dict[str, tuple[str, TritonServer]]) -> None:
        """Scrape `server`'s metrics as pod `name` in `namespace`, for each name: (namespace, server)."""
        self.scrape(
            [
                (
                    server.metrics_url.removeprefix("http://").removesuffix("/metrics"),
                    {"namespace": ns, "pod": pod},
                )
                for pod, (ns, server) in pods.items()
            ]
        )


@pytest.fixture(scope="module")
def prometheus(cluster_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = cluster_bin_dir / "prometheus"
    if not binary.exists():
        pytest.skip(f"no {binary}: run tests/cluster/build.sh (make test does)")
    server = Prometheus(binary, tmp_path_factory.mktemp("prometheus"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tritons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TritonServer]]:
    servers = {
        role: TritonServer(write_repository(tmp_path_factory.mktemp(f"repo-{role}"), delay))
        for role, delay in (("stable", BASE_MS), ("good", BASE_MS), ("slow", SLOW_MS))
    }
    started: list[TritonServer] = []
    try:
        for server in servers.values():
            server.start()
            started.append(server)
        load = Load(started)
        load.start()
        yield servers
        load.stopped.set()
        load.join(timeout=10)
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def rbac(cluster: DevCluster) -> Iterator[ChartRbac]:
    with chart_rbac_installed(cluster, release="md-canary") as chart_rbac:
        yield chart_rbac


def start_operator(rbac: ChartRbac, log: Path, prometheus: Prometheus) -> OperatorProcess:
    return OperatorProcess(
        rbac.kubeconfig, log, scope=("--all-namespaces",), extra_args=("--prometheus-url", prometheus.url)
    ).start()


def apply(cluster: DevCluster, namespace: str, tmp_path: Path, spec: dict[str, Any]) -> None:
    path = tmp_path / f"{NAME}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(model_deployment(NAME, spec)))
    cluster.kubectl("apply", "-n", namespace, "-f", str(path))


def md(api: KubeApi, namespace: str) -> dict[str, Any]:
    found = api.model_deployment(namespace, NAME)
    assert found is not None
    return found


def rollout_of(api: KubeApi, namespace: str) -> dict[str, Any]:
    return dict((md(api, namespace).get("status") or {}).get("rollout") or {})


def ready_pods(api: KubeApi, namespace: str, canary: bool) -> list[str]:
    return sorted(
        pod["metadata"]["name"]
        for pod in pods_of(api, namespace, NAME)
        if running_ready(pod)
        and (pod["metadata"].get("labels", {}).get("modeldeploy.dev/track") == "canary") == canary
    )


def spec_of(revision: str) -> dict[str, Any]:
    return {
        "model": {"source": "hf://org/ranker", "task": "text-classification", "revision": revision},
        "replicas": 2,
        "rollout": {
            "strategy": "Canary",
            "canary": {
                "steps": [{"weight": 25, "holdSeconds": INTERVAL}, {"weight": 50, "holdSeconds": INTERVAL}],
                "analysis": {"intervalSeconds": INTERVAL, "minRequests": 5},
            },
        },
    }


def test_the_query_client_reads_each_revisions_triton_metrics(
    prometheus: Prometheus, tritons: dict[str, TritonServer]
) -> None:
    """PrometheusClient against the real query API: each revision's figures come from its own pods."""
    prometheus.point(
        {
            f"{NAME}-5d8c7b9f4-x2k9q": ("query", tritons["stable"]),
            f"{NAME}-canary-6f9d8c7b5-p4m7z": ("query", tritons["slow"]),
        }
    )
    stable_pods = RevisionSelector("query", NAME, NAME)
    canary_pods = RevisionSelector("query", f"{NAME}-canary", NAME)

    def measured() -> tuple[RevisionMetrics, RevisionMetrics] | None:
        figures = asyncio.run(_both(prometheus.url, canary_pods, stable_pods))
        return figures if min(figures[0].requests, figures[1].requests) >= 5 else None

    canary, stable = wait_until("both revisions' requests in Prometheus", measured, timeout=60, interval=1)
    assert canary.error_ratio == 0 and stable.error_ratio == 0
    assert canary.mean_latency_us is not None and canary.mean_latency_us >= SLOW_MS * 1000
    assert stable.mean_latency_us is not None and stable.mean_latency_us < canary.mean_latency_us / 4
    verdict = judge(CanaryAnalysis(minRequests=5), canary, stable)
    assert verdict.outcome is AnalysisOutcome.FAILED and "maxLatencyRatio 1.25" in verdict.message


async def _both(
    url: str, canary: RevisionSelector, stable: RevisionSelector
) -> tuple[RevisionMetrics, RevisionMetrics]:
    # A client per event loop: asyncio.run makes a new loop each time.
    client = PrometheusClient(url)
    try:
        return await client.revision(canary, INTERVAL), await client.revision(stable, INTERVAL)
    finally:
        await client.close()


def test_canary_promoted_rolled_back_and_resumed_after_a_kill(
    cluster: DevCluster,
    api: KubeApi,
    rbac: ChartRbac,
    prometheus: Prometheus,
    tritons: dict[str, TritonServer],
    tmp_path: Path,
) -> None:
    log = tmp_path / "operator.log"
    operator = start_operator(rbac, log, prometheus)
    try:
        with models_namespace(cluster, "canary") as namespace:

            def point(canary_server: TritonServer) -> None:
                pods = {pod: (namespace, tritons["stable"]) for pod in ready_pods(api, namespace, False)}
                pods |= {pod: (namespace, canary_server) for pod in ready_pods(api, namespace, True)}
                prometheus.point(pods)

            apply(cluster, namespace, tmp_path, spec_of("v1"))
            wait_until("v1 Ready", lambda: is_ready(md(api, namespace)), timeout=120)
            point(tritons["good"])

            # 1. A good canary, through a kill of the operator at step 1.
            apply(cluster, namespace, tmp_path, spec_of("v2"))

            def step_started() -> dict[str, Any] | None:
                point(tritons["good"])
                rollout = rollout_of(api, namespace)
                return rollout if rollout.get("stepStartedAt") else None

            at_kill = wait_until("step 1 of the good canary started", step_started, timeout=120)
            assert at_kill["step"] == 1 and md(api, namespace)["status"]["conditions"]
            operator.kill()
            operator = start_operator(rbac, log, prometheus)

            def promoted() -> dict[str, Any] | None:
                point(tritons["good"])
                rollout = rollout_of(api, namespace)
                if rollout.get("phase") == "RolledBack":
                    raise AssertionError(f"the good canary was rolled back: {rollout}")
                return rollout if rollout.get("phase") == "Succeeded" else None

            # The resumed operator keeps the step and its start, then promotes through both steps.
            resumed = rollout_of(api, namespace)
            assert resumed.get("step", 0) >= 1
            if resumed.get("step") == 1:
                assert resumed["stepStartedAt"] == at_kill["stepStartedAt"]
            done = wait_until("the good canary promoted", promoted, timeout=240, interval=1)
            assert done["lastAnalysis"]["outcome"] == "Passed"
            assert done["lastAnalysis"]["canary"]["requests"] >= 5
            assert api.child("deployments", namespace, f"{NAME}-canary") is None
            reasons = [e["reason"] for e in events_of(api, namespace, md(api, namespace)["metadata"]["uid"])]
            assert {"CanaryStarted", "CanaryStepPassed", "CanaryPromoting", "CanaryPromoted"} <= set(reasons)
            wait_until("v2 Ready", lambda: is_ready(md(api, namespace)), timeout=120)

            # 2. A slow canary: rolled back at the first analysis after its step started.
            apply(cluster, namespace, tmp_path, spec_of("v3"))

            def slow_step_started() -> dict[str, Any] | None:
                point(tritons["slow"])
                rollout = rollout_of(api, namespace)
                return (
                    rollout
                    if rollout.get("phase") == "Progressing" and rollout.get("stepStartedAt")
                    else None
                )

            started = wait_until("step 1 of the slow canary started", slow_step_started, timeout=120)
            began = time.time()

            def rolled_back() -> dict[str, Any] | None:
                point(tritons["slow"])
                rollout = rollout_of(api, namespace)
                return rollout if rollout.get("phase") == "RolledBack" else None

            failed = wait_until(
                "the slow canary rolled back", rolled_back, timeout=6 * INTERVAL, interval=0.5
            )
            # The first analysis falls due one interval after the step started; allow one more for the
            # first window to hold enough samples, and a few seconds of watch and scrape latency.
            assert time.time() - began <= 2 * INTERVAL + 5, (started, failed)
            assert "maxLatencyRatio 1.25" in failed["message"] and "latency ratio" in failed["message"]
            assert failed["failedDigest"] == failed["canaryDigest"]
            current = md(api, namespace)
            assert condition(current, "Ready")["status"] == "True"  # type: ignore[index]
            canary_condition = condition(current, "Canary")
            assert canary_condition is not None and canary_condition["reason"] == "CanaryFailed"
            assert "latency ratio" in canary_condition["message"]
            warnings = [
                e
                for e in events_of(api, namespace, current["metadata"]["uid"])
                if e["reason"] == "CanaryFailed"
            ]
            assert (
                warnings and warnings[0]["type"] == "Warning" and "maxLatencyRatio" in warnings[0]["message"]
            )
            wait_until(
                "the canary Deployment deleted",
                lambda: api.child("deployments", namespace, f"{NAME}-canary") is None,
                timeout=30,
            )
    finally:
        operator.stop()
