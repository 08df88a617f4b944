"""Our KEDA and prometheus-operator objects against those projects' real CRDs, ScalingReady from a
real HorizontalPodAutoscaler controller, and one scaling decision made by the real KEDA operator, on the
local control plane.

The CRDs come from KEDA's and prometheus-operator's pinned Go modules (tests/cluster/crds.sh, run at
setup; no network here). They are installed for this module only and removed after it, so the rest of the
suite keeps seeing a cluster without KEDA. The KEDA operator (tests/cluster/build.sh builds it from the
same KEDA module; modeldeploy_dev.keda runs it under KEDA's release RBAC) runs only in the test that drives
its decision, watching that test's namespace; elsewhere, where a test writes a ScaledObject's status, it
writes what KEDA writes (its condition types and reasons), and says so.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy.api import AutoscalingMetric
from modeldeploy.compare import is_subset
from modeldeploy.manifests import desired_state
from modeldeploy.settings import FIELD_MANAGER, ClusterCapabilities, RenderSettings
from modeldeploy_dev.devcluster import DevCluster
from modeldeploy_dev.direct_reconciler import DirectReconciler
from modeldeploy_dev.harness import wait_until
from modeldeploy_dev.keda import KedaOperator
from modeldeploy_dev.prometheus import PrometheusServer

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "hf://google-bert/bert-base-uncased"
SETTINGS = RenderSettings(triton_image="triton:t", builder_image="builder:t")


def third_party_crds() -> Path:
    script = ROOT / "tests" / "cluster" / "crds.sh"
    if subprocess.run(["bash", str(script), "--check"], check=False).returncode != 0:
        pytest.fail("the KEDA and prometheus-operator CRDs are not fetched: run `bash tests/cluster/crds.sh`")
    found = subprocess.run(["bash", str(script), "--print-dir"], check=True, capture_output=True, text=True)
    return Path(found.stdout.strip())


@pytest.fixture(scope="module")
def crds(cluster: DevCluster) -> Iterator[list[str]]:
    directory = third_party_crds()
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    cluster.kubectl("apply", "--server-side", "-f", str(directory))
    names = [
        yaml.safe_load(path.read_text())["metadata"]["name"] for path in sorted(directory.glob("*.yaml"))
    ]
    cluster.kubectl(
        "wait", "--for=condition=Established", *(f"crd/{name}" for name in names), "--timeout=60s"
    )
    yield names
    cluster.kubectl("delete", "-f", str(directory), "--wait=true", "--timeout=120s", check=False)


@pytest.fixture
def namespace(cluster: DevCluster, crds: list[str]) -> Iterator[str]:
    name = f"crds-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(cluster: DevCluster, manifest: dict[str, Any], namespace: str) -> dict[str, Any]:
    """Server-side dry run (schema and CEL), then the apply itself; what the API server stored."""
    # Without the owner reference: its ModelDeployment does not exist here, and the garbage collector
    # would delete the object under the test.
    metadata = {key: value for key, value in manifest["metadata"].items() if key != "ownerReferences"}
    body = json.dumps({**manifest, "metadata": {**metadata, "namespace": namespace}})
    for extra in (["--dry-run=server"], []):
        cluster.kubectl(
            "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", *extra, "-f", "-", input=body
        )
    kind, name = manifest["kind"].lower(), manifest["metadata"]["name"]
    stored: dict[str, Any] = json.loads(
        cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    )
    return stored


def md_body(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace, "uid": "u-" + name, "generation": 1},
        "spec": {"model": {"source": SOURCE, "task": "text-generation"}, **spec},
    }


@pytest.mark.parametrize("metric", list(AutoscalingMetric))
def test_our_scaled_objects_and_service_monitors_are_accepted_whole(
    cluster: DevCluster, namespace: str, metric: AutoscalingMetric
) -> None:
    from modeldeploy.checks import parse_for_reconcile

    autoscaling = {
        "engine": "keda",
        "minReplicas": 0,
        "maxReplicas": 4,
        "scaleToZero": True,
        "metric": metric.value,
    }
    extra: dict[str, Any] = {}
    if metric is AutoscalingMetric.CPU:
        autoscaling.update(minReplicas=1, scaleToZero=False)
        extra = {"resources": {"requests": {"cpu": "2"}}}
    md = parse_for_reconcile(md_body("gen", namespace, {"autoscaling": autoscaling, **extra}))
    desired = desired_state(md, SETTINGS, ClusterCapabilities(service_monitors=True, keda=True))
    assert desired.scaled_object is not None and desired.service_monitor is not None
    for manifest in (desired.scaled_object, desired.service_monitor):
        stored = apply(cluster, manifest, namespace)
        # A structural schema prunes fields it does not know, silently: everything we sent must be stored.
        assert is_subset(manifest["spec"], stored["spec"]), (manifest["spec"], stored["spec"])


def test_the_charts_monitoring_objects_are_accepted(cluster: DevCluster, namespace: str) -> None:
    rendered = subprocess.run(
        [
            str(cluster.helm), "template", "modeldeploy", str(ROOT / "charts" / "modeldeploy"),
            "--namespace", namespace, "--set", "metrics.service.enabled=true",
            "--set", "metrics.serviceMonitor.enabled=true",
        ],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    monitoring = [
        obj
        for obj in yaml.safe_load_all(rendered)
        if obj and obj["apiVersion"].startswith("monitoring.coreos.com/")
    ]
    assert [obj["kind"] for obj in monitoring] == ["ServiceMonitor"]
    for obj in monitoring:
        stored = apply(cluster, obj, namespace)
        assert is_subset(obj["spec"], stored["spec"])


class Reconciling(DirectReconciler):
    def __init__(self, cluster: DevCluster, namespace: str, settings: RenderSettings = SETTINGS) -> None:
        super().__init__(cluster, settings)
        self.namespace = namespace

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out = self.cluster.kubectl("get", kind, name, "-n", self.namespace, "-o", "json")
        body: dict[str, Any] = json.loads(out.stdout)
        return body

    def create(self, name: str, spec: dict[str, Any]) -> None:
        body = md_body(name, self.namespace, spec)
        body["metadata"] = {"name": name}
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(body))

    def condition(self, name: str, kind: str) -> tuple[str, str, str]:
        self.run(self.reconciler.reconcile(self.get("modeldeployment", name)))
        status = self.get("modeldeployment", name).get("status") or {}
        (found,) = [c for c in status.get("conditions") or [] if c["type"] == kind]
        return found["status"], found["reason"], found["message"]


@pytest.fixture
def reconciling(cluster: DevCluster, namespace: str) -> Iterator[Reconciling]:
    r = Reconciling(cluster, namespace)
    yield r
    r.close()


def test_scaling_ready_reads_the_scaled_object_back(reconciling: Reconciling) -> None:
    reconciling.create("gen", {"autoscaling": {"engine": "keda", "minReplicas": 1, "maxReplicas": 3}})
    assert reconciling.condition("gen", "ScalingReady")[:2] == ("Unknown", "Pending")
    scaled_object = reconciling.get("scaledobject", "gen")
    assert scaled_object["spec"]["maxReplicaCount"] == 3
    # What the KEDA operator writes when its Prometheus cannot answer (no KEDA operator runs here).
    ready = (
        "Ready",
        "True",
        "ScaledObjectReady",
        "ScaledObject is defined correctly and is ready for scaling",
    )
    idle = ("Active", "False", "ScalerNotActive", "Scaling is not performed because triggers are not active")
    falling = (
        "Fallback",
        "True",
        "FallbackExists",
        "At least one trigger is falling back on this scaled object",
    )
    keys = ("type", "status", "reason", "message")
    status = {"conditions": [dict(zip(keys, condition, strict=True)) for condition in (ready, idle, falling)]}
    reconciling.cluster.kubectl(
        "patch", "scaledobject", "gen", "-n", reconciling.namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    state, reason, message = reconciling.condition("gen", "ScalingReady")
    assert (state, reason) == ("False", "FallbackExists")
    assert "ScaledObject gen: Fallback=True (FallbackExists)" in message
    assert reconciling.condition("gen", "AutoscalerReady")[:2] == ("True", "ScaledObjectReady")


def test_scaling_ready_from_a_real_hpa_controller_without_its_metric(reconciling: Reconciling) -> None:
    spec = {"autoscaling": {"engine": "hpa", "minReplicas": 1, "maxReplicas": 3, "metric": "pendingRequests"}}
    reconciling.create("bert", {**spec, "model": {"source": SOURCE, "task": "text-classification"}})
    # The controller-manager's HPA controller finds no custom metrics API in this cluster (15 s a round).
    _state, reason, message = wait_until(
        "the HPA controller's verdict",
        lambda: (c := reconciling.condition("bert", "ScalingReady"))[0] == "False" and c,
        timeout=120,
        tolerate=(),
    )
    assert reason == "FailedGetPodsMetric", message
    assert message.startswith("HorizontalPodAutoscaler bert: ScalingActive=False (FailedGetPodsMetric): ")
    assert "unable to get metric" in message, message


class PendingRequests(ThreadingHTTPServer):
    """A /metrics endpoint that plays a Triton pod's: `nv_inference_pending_request_count`, the series our
    pendingRequests trigger sums, at whatever `value` the test sets."""

    def __init__(self) -> None:
        self.value = 0
        super().__init__(("127.0.0.1", 0), _PendingRequestsHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _PendingRequestsHandler(BaseHTTPRequestHandler):
    server: PendingRequests

    def do_GET(self) -> None:
        body = (
            "# TYPE nv_inference_pending_request_count gauge\n"
            f'nv_inference_pending_request_count{{model="gen",version="1"}} {self.server.value}\n'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: Prometheus scrapes every second."""


def keda_events(cluster: DevCluster, namespace: str, reason: str) -> list[str]:
    listed = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [str(e.get("message") or e.get("note")) for e in listed if e.get("reason") == reason]


def test_the_keda_operator_scales_our_scaled_object_and_scaling_ready_reads_it(
    cluster: DevCluster, namespace: str, tmp_path: Path
) -> None:
    """KEDA itself decides: our ScaledObject (scale to zero, pendingRequests on Prometheus) deactivates the
    idle Deployment, 1 -> 0, and activates it, 0 -> 1, once Prometheus has scraped pending requests;
    ScalingReady and AutoscalerReady quote the conditions KEDA wrote each time."""
    pending = PendingRequests()
    prometheus = PrometheusServer(cluster.bin_dir / "prometheus", tmp_path).start()
    keda = KedaOperator(cluster, tmp_path / "keda", watch_namespace=namespace).start()
    settings = RenderSettings(
        triton_image="triton:t", builder_image="builder:t", prometheus_url=prometheus.url
    )
    reconciling = Reconciling(cluster, namespace, settings)
    try:
        # The Service's series, as a ServiceMonitor's scrape labels them: what the trigger's query selects.
        prometheus.scrape([(pending.address, {"namespace": namespace, "service": "gen"})])
        autoscaling = {
            "engine": "keda",
            "minReplicas": 0,
            "maxReplicas": 3,
            "scaleToZero": True,
            "metric": "pendingRequests",
        }
        reconciling.create("gen", {"autoscaling": autoscaling})
        reconciling.condition("gen", "ScalingReady")  # a reconcile: our Deployment and ScaledObject

        def replicas() -> int | None:
            count: int | None = reconciling.get("deployment", "gen")["spec"].get("replicas")
            return count

        def active() -> str | None:
            conditions = (reconciling.get("scaledobject", "gen").get("status") or {}).get("conditions") or []
            return next((str(c["status"]) for c in conditions if c["type"] == "Active"), None)

        def decided(what: str, expected: int, reason: str) -> str:
            """KEDA's decision: the Deployment's replicas, KEDA's Event saying it made the change, and the
            Active condition it writes after; returns the Event's message."""
            try:
                wait_until(what, lambda: replicas() == expected, timeout=60, interval=1)
                (event,) = wait_until(
                    f"KEDA's {reason} Event", lambda: keda_events(cluster, namespace, reason), 30, interval=1
                )
                state = "True" if expected else "False"
                wait_until(f"KEDA's Active={state} condition", lambda: active() == state, 30, interval=1)
            except AssertionError as err:
                raise AssertionError(f"{err}\n--- KEDA operator log ---\n{keda.log_tail()}") from None
            return event

        # The Deployment starts at 1 (it leaves replicas to the autoscaler); nothing is pending: KEDA scales
        # it to zero at its first poll (no cooldown before any activity).
        deactivated = decided(
            "KEDA to deactivate the idle Deployment (1 -> 0)", 0, "KEDAScaleTargetDeactivated"
        )
        assert deactivated == f"Deactivated apps/v1.Deployment {namespace}/gen from 1 to 0", deactivated
        state, reason, message = reconciling.condition("gen", "ScalingReady")
        assert (state, reason) == ("True", "ScalingActive"), message
        assert message == (
            "ScaledObject gen: Active=False (ScalerNotActive): "
            "Scaling is not performed because triggers are not active"
        )
        assert reconciling.condition("gen", "AutoscalerReady") == (
            "True",
            "ScaledObjectReady",
            "ScaledObject is defined correctly and is ready for scaling",
        )

        # Three requests wait: above the trigger's activationThreshold (0), at KEDA's next poll (15 s).
        pending.value = 3
        activated = decided("KEDA to activate the Deployment (0 -> 1)", 1, "KEDAScaleTargetActivated")
        # s0-prometheus: KEDA's name for the metric of our first (only) trigger, a prometheus one.
        assert activated == (
            f"Scaled apps/v1.Deployment {namespace}/gen from 0 to 1, triggered by s0-prometheus"
        ), activated
        state, reason, message = reconciling.condition("gen", "ScalingReady")
        assert (state, reason) == ("True", "ScalingActive"), message
        assert message == (
            "ScaledObject gen: Active=True (ScalerActive): Scaling is performed because triggers are active"
        )
        # Past the minimum, KEDA hands the replica count to the HorizontalPodAutoscaler it made for our
        # trigger (its external metric would come from KEDA's metrics adapter, which does not run here).
        hpa = reconciling.get("hpa", "keda-hpa-gen")
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "External", metric
        (trigger,) = reconciling.get("scaledobject", "gen")["spec"]["triggers"]
        target = {"type": trigger["metricType"], "averageValue": trigger["metadata"]["threshold"]}
        assert metric["external"]["target"] == target, (metric, trigger)
    finally:
        # Deleted while KEDA runs, which removes its finalizer: the module's CRDs can then be deleted.
        cluster.kubectl("delete", "scaledobject", "--all", "-n", namespace, "--timeout=60s", check=False)
        reconciling.close()
        keda.stop()
        prometheus.stop()
        pending.shutdown()
