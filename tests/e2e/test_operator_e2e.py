"""The operator, end to end, against the real local control plane.

One operator process serves the whole module: ``modeldeploy operator --all-namespaces --standalone``,
authenticated as a ServiceAccount bound to exactly the RBAC that ``helm template charts/modeldeploy``
renders. After every test the operator must still be alive and must not have met a single RBAC denial
(in its log or in the apiserver's audit log): a verb missing from the chart's role fails the test that
needed it. Each test works in a namespace of its own.

KWOK plays the kubelet: pods are scheduled onto fake GPU nodes and marked Running and Ready without
containers, so what is tested is everything up to the container runtime.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modeldeploy_dev.devcluster import FAULT_PREFIX, DevCluster
from modeldeploy_dev.harness import (
    NAME_LABEL,
    ChartRbac,
    Example,
    KubeApi,
    OperatorProcess,
    applied_by_us,
    apply_objects,
    assert_no_forbidden,
    chart_rbac_installed,
    condition,
    events_of,
    example_model_deployments,
    is_ready,
    load_gitops_health,
    model_deployment,
    models_namespace,
    owned_by,
    pods_of,
    reserve_volume,
    running_ready,
    wait_until,
    watching,
)

pytestmark = pytest.mark.cluster

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
SOURCE = "hf://google-bert/bert-base-uncased"
REVISION_1 = "86b5e0934494bd15c9632b12f734a8a67f723594"
REVISION_2 = "0a6aa9128b6194f4f3c4db429b6cb4891cdb421b"
RESTORE_SECONDS = 10.0
READY_TIMEOUT = 90.0


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def rbac(cluster: DevCluster) -> Iterator[ChartRbac]:
    with chart_rbac_installed(cluster, release="md-e2e") as chart_rbac:
        yield chart_rbac


@pytest.fixture(autouse=True)
def operator_stays_healthy_and_authorized(
    request: pytest.FixtureRequest, cluster: DevCluster
) -> Iterator[None]:
    if "operator" not in request.fixturenames:
        yield
        return
    operator: OperatorProcess = request.getfixturevalue("operator")
    rbac: ChartRbac = request.getfixturevalue("rbac")
    mark = cluster.audit_log.mark()
    yield
    assert operator.running, f"the operator died:\n{operator.log_tail()}"
    assert operator.healthy(), f"the operator's /healthz fails:\n{operator.log_tail()}"
    assert_no_forbidden(cluster, operator, rbac.user, since=mark)


@pytest.fixture
def namespace(cluster: DevCluster, api: KubeApi) -> Iterator[str]:
    with models_namespace(cluster, "e2e") as name:
        yield name


# --------------------------------------------------------------------------------------------------
# Helpers


def deploy(
    cluster: DevCluster,
    api: KubeApi,
    namespace: str,
    tmp_path: Path,
    name: str,
    spec: dict[str, Any],
    timeout: float = READY_TIMEOUT,
) -> dict[str, Any]:
    """Apply a ModelDeployment and wait until it is Ready; the object then."""
    apply_objects(cluster, namespace, tmp_path, model_deployment(name, spec))
    return wait_ready(api, namespace, name, timeout)


def md_of(api: KubeApi, namespace: str, name: str) -> dict[str, Any]:
    md = api.model_deployment(namespace, name)
    assert md is not None, f"modeldeployment {namespace}/{name} is gone"
    return md


def wait_ready(api: KubeApi, namespace: str, name: str, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        md = api.model_deployment(namespace, name)
        return md if md and is_ready(md) else None

    try:
        return wait_until(f"modeldeployment {namespace}/{name} Ready", ready, timeout)
    except AssertionError as err:
        md = api.model_deployment(namespace, name)
        raise AssertionError(f"{err}; status: {json.dumps((md or {}).get('status'), indent=1)}") from None


def wait_observed(api: KubeApi, namespace: str, name: str, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    """The ModelDeployment once the operator has processed its current generation."""

    def observed() -> dict[str, Any] | None:
        md = api.model_deployment(namespace, name)
        if md and (md.get("status") or {}).get("observedGeneration") == md["metadata"]["generation"]:
            return md
        return None

    return wait_until(f"{namespace}/{name} observedGeneration", observed, timeout)


def wait_deployment_rolled_out(
    api: KubeApi, namespace: str, name: str, replicas: int, timeout: float = READY_TIMEOUT
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        deployment = api.child("deployments", namespace, name)
        if deployment is None:
            return None
        status = deployment.get("status") or {}
        complete = (
            status.get("observedGeneration") == deployment["metadata"]["generation"]
            and deployment["spec"].get("replicas") == replicas
            and status.get("updatedReplicas") == replicas
            and status.get("availableReplicas") == replicas
            and status.get("replicas") == replicas
        )
        return deployment if complete else None

    return wait_until(f"deployment {namespace}/{name} rolled out with {replicas} replicas", done, timeout)


def pod_uids(api: KubeApi, namespace: str, name: str) -> set[str]:
    return {pod["metadata"]["uid"] for pod in pods_of(api, namespace, name)}


def patch_md(cluster: DevCluster, namespace: str, name: str, patch: dict[str, Any]) -> None:
    cluster.kubectl(
        "patch", "modeldeployment", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch)
    )


def spec_for(
    *,
    replicas: int = 1,
    gpus: int = 0,
    gpu_product: str | None = None,
    revision: str | None = REVISION_1,
    **extra: Any,
) -> dict[str, Any]:
    model: dict[str, Any] = {"source": SOURCE, "task": "text-classification"}
    if revision:
        model["revision"] = revision
    resources: dict[str, Any] = {"gpus": gpus}
    if gpu_product:
        resources["gpuProduct"] = gpu_product
    return {"model": model, "replicas": replicas, "resources": resources, **extra}


# --------------------------------------------------------------------------------------------------
# The CRD


def test_crd_is_established_and_explained(cluster: DevCluster, rbac: ChartRbac) -> None:
    crd = json.loads(cluster.kubectl("get", "crd", "modeldeployments.modeldeploy.dev", "-o", "json").stdout)
    established = [c for c in crd["status"]["conditions"] if c["type"] == "Established"]
    assert established and established[0]["status"] == "True"

    # The OpenAPI document that kubectl explain reads is published a moment after Established.
    def explained() -> str | None:
        proc = cluster.kubectl("explain", "modeldeployment.spec", check=False)
        return proc.stdout if proc.returncode == 0 and "model" in proc.stdout else None

    spec_doc = wait_until("kubectl explain modeldeployment.spec", explained, timeout=60)
    assert "Desired state of a ModelDeployment" in spec_doc
    for field_name, description in [
        ("model", "The checkpoint to serve."),
        ("autoscaling", "Autoscale on a Triton metric"),
        ("replicas", "Number of Triton pods"),
    ]:
        assert field_name in spec_doc and description in spec_doc, spec_doc
    source_doc = cluster.kubectl("explain", "modeldeployment.spec.model.source").stdout
    assert "URI of the Hugging Face Transformers checkpoint" in source_doc


# --------------------------------------------------------------------------------------------------
# Serving


def test_gpu_model_is_served_by_owned_children_on_the_right_nodes(
    cluster: DevCluster, api: KubeApi, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    name = "bert-h100"
    apply_objects(
        cluster, namespace, tmp_path, model_deployment(name, spec_for(replicas=2, gpus=1, gpu_product=H100))
    )

    timeout = f"--timeout={int(READY_TIMEOUT)}s"
    waited = cluster.kubectl(
        "wait", "--for=condition=Ready", f"modeldeployment/{name}", "-n", namespace, timeout,
        check=False, timeout=READY_TIMEOUT + 10,
    )  # fmt: skip
    assert waited.returncode == 0, (
        waited.stderr + "\n" + json.dumps(md_of(api, namespace, name).get("status"))
    )
    md = wait_ready(api, namespace, name)
    uid = md["metadata"]["uid"]

    # Children: owned (controller reference, so the garbage collector removes them) and server-side
    # applied by our field manager.
    for resource in ("deployments", "services", "poddisruptionbudgets"):
        child = api.child(resource, namespace, name)
        assert child is not None, f"no {resource}/{name}"
        assert owned_by(child, uid), f"{resource}/{name} is not owned by the ModelDeployment"
        assert applied_by_us(child), (
            f"{resource}/{name} managedFields: {child['metadata'].get('managedFields')}"
        )
        assert child["metadata"]["labels"][NAME_LABEL] == name
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modeldeploy"

    deployment = api.child("deployments", namespace, name)
    assert deployment is not None
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    # Pods: on the H100 node only (the A100 node has free GPUs too), Running and Ready.
    pods = pods_of(api, namespace, name)
    assert len(pods) == 2
    nodes = {node.name: node for node in cluster.nodes}
    for pod in pods:
        assert running_ready(pod), pod["status"]
        node = nodes[pod["spec"]["nodeName"]]
        assert node.gpu_product == H100, f"{pod['metadata']['name']} landed on {node.name}"
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"

    # Status: replicas, endpoints and the Service's real endpoints (the pods' IPs, from KWOK).
    status = md["status"]
    assert status["replicas"] == 2 and status["readyReplicas"] == 2
    assert status["selector"]
    assert f"{name}.{namespace}" in status["endpoints"]["http"]
    assert f"{name}.{namespace}" in status["endpoints"]["grpc"]
    for type_ in ("ModelRepositoryReady", "Available", "Ready"):
        cond = condition(md, type_)
        assert cond is not None and cond["status"] == "True", (type_, status["conditions"])

    def ready_endpoints() -> set[str] | None:
        slices = api.items("endpointslices", namespace, f"kubernetes.io/service-name={name}")
        addresses = {
            address
            for endpoint_slice in slices
            for endpoint in endpoint_slice.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready")
            for address in endpoint["addresses"]
        }
        return addresses if len(addresses) == 2 else None

    addresses = wait_until("the Service's EndpointSlices to list both pods", ready_endpoints, timeout=30)
    assert addresses == {pod["status"]["podIP"] for pod in pods}


def test_kubectl_get_shows_the_printer_columns(
    cluster: DevCluster, api: KubeApi, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    name = "bert-columns"
    deploy(cluster, api, namespace, tmp_path, name, spec_for(replicas=1))

    table = cluster.kubectl("get", "mdeploy", "-n", namespace).stdout.splitlines()
    header = table[0].split()
    assert header == [
        "NAME",
        "READY",
        "PHASE",
        "REASON",
        "MODEL",
        "FORMAT",
        "REPLICAS",
        "PROGRESS",
        "ROLLOUT",
        "AGE",
    ], table
    # Read by the header's columns: PROGRESS is empty once nothing builds, ROLLOUT without a canary.
    starts = [table[0].index(column) for column in header]
    ends = [*starts[1:], None]
    row = {
        column: table[1][start:end].strip() for column, start, end in zip(header, starts, ends, strict=True)
    }
    assert row["PROGRESS"] == ""
    assert row["ROLLOUT"] == ""
    assert row["NAME"] == name
    assert row["READY"] == "True"
    assert row["PHASE"] == "Ready"
    assert row["REASON"] == "Serving"
    assert row["MODEL"] == SOURCE
    assert row["FORMAT"] == "python"  # auto on the CPU
    assert row["REPLICAS"] == "1/1"

    # A normal start: one Normal Event per change of Ready (it used to be one per condition transition,
    # eight in all), the last one saying where the model is served.
    uid = md_of(api, namespace, name)["metadata"]["uid"]
    events = wait_until(
        "the Serving Event",
        lambda: (found := events_of(api, namespace, uid)) and found[-1]["reason"] == "Serving" and found,
        timeout=10,
    )
    assert all(e["type"] == "Normal" for e in events) and len(events) <= 3, [
        (e["type"], e["reason"]) for e in events
    ]
    assert f"is served at http://{name}.{namespace}" in events[-1]["message"], events[-1]


def test_cpu_model_lands_on_the_cpu_node(
    cluster: DevCluster, api: KubeApi, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    name = "bert-cpu"
    deploy(cluster, api, namespace, tmp_path, name, spec_for(replicas=1))
    (pod,) = pods_of(api, namespace, name)
    node = next(n for n in cluster.nodes if n.name == pod["spec"]["nodeName"])
    assert node.gpus == 0, f"a CPU model was placed on GPU node {node.name}"
    assert "nvidia.com/gpu" not in (pod["spec"]["containers"][0].get("resources") or {}).get("limits", {})


# --------------------------------------------------------------------------------------------------
# Changes


def test_new_revision_rolls_pods_and_never_drops_below_desired(
    cluster: DevCluster, api: KubeApi, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    name = "bert-roll"
    replicas = 3
    deploy(cluster, api, namespace, tmp_path, name, spec_for(replicas=replicas, gpus=1, gpu_product=A100))
    before = wait_deployment_rolled_out(api, namespace, name, replicas)
    old_pods = pod_uids(api, namespace, name)
    old_template = before["spec"]["template"]

    path = f"/apis/apps/v1/namespaces/{namespace}/deployments?fieldSelector=metadata.name%3D{name}"
    with watching(api, path, before["metadata"]["resourceVersion"]) as events:
        patch_md(cluster, namespace, name, {"spec": {"model": {"revision": REVISION_2}}})
        after = wait_until(
            "a new pod template",
            lambda: (
                (d := api.child("deployments", namespace, name))
                and d["metadata"]["generation"] > before["metadata"]["generation"]
                and d
            ),
            timeout=30,
        )
        after = wait_deployment_rolled_out(api, namespace, name, replicas)
        wait_until("old pods gone", lambda: not pod_uids(api, namespace, name) & old_pods, timeout=60)
        time.sleep(0.5)  # let the watch deliver the last status updates
        seen = list(events)

    assert after["spec"]["template"] != old_template
    annotations = after["spec"]["template"]["metadata"].get("annotations") or {}
    assert annotations != (old_template["metadata"].get("annotations") or {}), (
        "the model digest did not change"
    )

    statuses = [obj.get("status") or {} for kind, obj in seen if kind == "MODIFIED"]
    assert any((s.get("updatedReplicas") or 0) < replicas for s in statuses), "no roll was observed"
    available = [s.get("availableReplicas", 0) for s in statuses]
    assert min(available) >= replicas, f"available replicas dropped during the roll: {available}"
    new_pods = pods_of(api, namespace, name)
    assert len(new_pods) == replicas and all(running_ready(p) for p in new_pods)
    md = wait_ready(api, namespace, name)
    assert md["status"]["readyReplicas"] == replicas


def test_unrelated_changes_do_not_restart_pods(
    cluster: DevCluster, api: KubeApi, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    name = "bert-steady"
    autoscaling = {"minReplicas": 2, "maxReplicas": 4, "metric": "queueTime"}
    apply_objects(cluster, namespace, tmp_path, model_deployment(name, spec_for(autoscaling=autoscaling)))
    wait_observed(api, namespace, name)
    wait_until(
        "2 pods running (HPA minReplicas)",
        lambda: len([p for p in pods_of(api, namespace, name) if running_ready(p)]) == 2,
        timeout=READY_TIMEOUT,
    )
    deployment = wait_deployment_rolled_out(api, namespace, name, 2)
    template = deployment["spec"]["template"]
    pods = pod_uids(api, namespace, name)
    hpa = api.child("horizontalpodautoscalers", namespace, name)
    assert (
        hpa is not None
        and owned_by(hpa, md_of(api, namespace, name)["metadata"]["uid"])
        and applied_by_us(hpa)
    )
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)

    # A label on the ModelDeployment, then a new autoscaling target: neither touches the pod template.
    cluster.kubectl("label", "modeldeployment", name, "-n", namespace, "team=search")
    patch_md(cluster, namespace, name, {"spec": {"autoscaling": {"target": "20000"}}})
    wait_observed(api, namespace, name)

    def target_updated() -> bool:
        current = api.child("horizontalpodautoscalers", namespace, name)
        (metric,) = (current or {}).get("spec", {}).get("metrics") or [None]
        # The apiserver keeps quantities in canonical form: 20000 reads back as 20k.
        return metric is not None and metric["pods"]["target"]["averageValue"] in {"20k", "20000"}

    wait_until("the HPA's new target", target_updated, timeout=30)
    current = api.child("deployments", namespace, name)
    assert current is not None
    assert current["spec"]["template"] == template
    assert pod_uids(api, namespace, name) == pods


def test_turning_autoscaling_off_removes_the_autoscaler_and_the_disruption_budget(
    cluster: DevCluster, api: KubeApi, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    """The operator learns which of these children exist from its watches (no request per reconcile);
    that knowledge must still make it delete the ones it no longer wants."""
    name = "bert-unscale"
    autoscaling = {"minReplicas": 2, "maxReplicas": 3, "metric": "queueTime"}
    apply_objects(cluster, namespace, tmp_path, model_deployment(name, spec_for(autoscaling=autoscaling)))
    wait_observed(api, namespace, name)
    for resource in ("horizontalpodautoscalers", "poddisruptionbudgets"):
        wait_until(f"the {resource}", lambda r=resource: api.child(r, namespace, name), timeout=30)

    patch_md(cluster, namespace, name, {"spec": {"autoscaling": None, "replicas": 1}})
    for resource in ("horizontalpodautoscalers", "poddisruptionbudgets"):
        wait_until(
            f"the {resource} gone", lambda r=resource: api.child(r, namespace, name) is None, timeout=30
        )
    wait_ready(api, namespace, name)


def test_openai_api_adds_the_sidecar_port_and_endpoint_only_while_enabled(
    cluster: DevCluster, api: KubeApi, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    name = "minilm-openai"
    model = {"source": "hf://sentence-transformers/all-MiniLM-L6-v2", "task": "feature-extraction"}
    spec = {"model": model, "replicas": 1, "api": {"openai": {"enabled": True}}}
    apply_objects(cluster, namespace, tmp_path, model_deployment(name, spec))
    md = wait_ready(api, namespace, name)
    assert md["status"]["endpoints"]["openai"] == f"http://{name}.{namespace}.svc:9000/v1"
    deployment = api.child("deployments", namespace, name)
    assert deployment is not None
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [container["name"] for container in containers] == ["triton", "openai"]
    # The apiserver adds its defaults (scheme: HTTP).
    probe = containers[1]["readinessProbe"]["httpGet"]
    assert {"path": "/health/ready", "port": "openai"}.items() <= probe.items()
    service = api.child("services", namespace, name)
    assert service is not None
    assert {"name": "openai", "port": 9000} in [
        {"name": port["name"], "port": port["port"]} for port in service["spec"]["ports"]
    ]
    (pod,) = pods_of(api, namespace, name)
    assert [container["name"] for container in pod["spec"]["containers"]] == ["triton", "openai"]

    patch_md(cluster, namespace, name, {"spec": {"api": {"openai": {"enabled": False}}}})

    def sidecar_gone() -> bool:
        current = api.child("deployments", namespace, name)
        service = api.child("services", namespace, name)
        return (
            current is not None
            and service is not None
            and [c["name"] for c in current["spec"]["template"]["spec"]["containers"]] == ["triton"]
            and "openai" not in [port["name"] for port in service["spec"]["ports"]]
        )

    wait_until("the sidecar and its Service port gone", sidecar_gone, timeout=30)
    md = wait_ready(api, namespace, name)
    wait_until(
        "status.endpoints without openai",
        lambda: "openai" not in (md_of(api, namespace, name)["status"].get("endpoints") or {}),
        timeout=30,
    )


def test_network_policy_is_created_owned_updated_and_pruned_with_api_keys_and_triton_inside(
    cluster: DevCluster, api: KubeApi, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    """spec.network and spec.api.auth as the API server stores them. The dev cluster runs no network
    plugin (KWOK plays the kubelet; no CNI): what is checked here is the NetworkPolicy object (accepted,
    owned, updated, pruned), not that traffic is blocked; docs/security.md says what enforces it."""
    name = "minilm-locked"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "minilm-keys"},
        "stringData": {"keys": "sk-e2e-one\nsk-e2e-two\n"},
    }
    model = {"source": "hf://sentence-transformers/all-MiniLM-L6-v2", "task": "feature-extraction"}
    network = {
        "allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "search"}}}],
        "monitoringNamespace": "monitoring",
    }
    api_spec = {"openai": {"enabled": True}, "auth": {"secretName": "minilm-keys"}}
    spec = {"model": model, "replicas": 1, "api": api_spec, "network": network}
    apply_objects(cluster, namespace, tmp_path, secret, model_deployment(name, spec))
    md = wait_ready(api, namespace, name)
    uid = md["metadata"]["uid"]
    policy = wait_until(
        "the NetworkPolicy", lambda: api.child("networkpolicies", namespace, name), timeout=30
    )
    assert owned_by(policy, uid) and applied_by_us(policy)
    serving, metrics = policy["spec"]["ingress"]
    assert serving["from"] == [{"namespaceSelector": {"matchLabels": {"team": "search"}}}]
    assert [port["port"] for port in serving["ports"]] == [9000]  # Triton is on the pod's loopback
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # With keys, the Service offers the keyed API and metrics only, and the status no Triton endpoint.
    service = api.child("services", namespace, name)
    assert service is not None
    assert sorted(port["name"] for port in service["spec"]["ports"]) == ["metrics", "openai"]
    assert {"http", "grpc"}.isdisjoint(md["status"]["endpoints"])
    deployment = api.child("deployments", namespace, name)
    assert deployment is not None
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"secretName": "minilm-keys"}.items() <= next(v for v in volumes if v["name"] == "api-keys")[
        "secret"
    ].items()

    patch_md(
        cluster, namespace, name,
        {"spec": {"network": {"allowFrom": [{"podSelector": {"matchLabels": {"role": "rag"}}}]}}},
    )  # fmt: skip

    def updated() -> dict[str, Any] | None:
        current = api.child("networkpolicies", namespace, name)
        if current and current["spec"]["ingress"][0]["from"] == [
            {"podSelector": {"matchLabels": {"role": "rag"}}}
        ]:
            return current
        return None

    assert owned_by(wait_until("the NetworkPolicy updated", updated, timeout=30), uid)

    patch_md(cluster, namespace, name, {"spec": {"network": None}})
    wait_until(
        "the NetworkPolicy pruned", lambda: api.child("networkpolicies", namespace, name) is None, timeout=30
    )
    wait_ready(api, namespace, name)


def test_kubectl_scale_goes_through_the_scale_subresource(
    cluster: DevCluster, api: KubeApi, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    name = "bert-scale"
    deploy(cluster, api, namespace, tmp_path, name, spec_for(replicas=1))

    cluster.kubectl("scale", f"mdeploy/{name}", "-n", namespace, "--replicas=3")
    assert md_of(api, namespace, name)["spec"]["replicas"] == 3
    wait_deployment_rolled_out(api, namespace, name, 3)
    md = wait_until(
        "status.replicas 3",
        lambda: (
            (m := md_of(api, namespace, name)) and is_ready(m) and m["status"].get("readyReplicas") == 3 and m
        ),
        timeout=READY_TIMEOUT,
    )
    scale = json.loads(
        cluster.kubectl("get", f"mdeploy/{name}", "-n", namespace, "--subresource=scale", "-o", "json").stdout
    )
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == md["status"]["selector"]
    # The selector finds exactly the model's pods (what an HPA or VPA targeting the scale would count).
    selected = api.items("pods", namespace, scale["status"]["selector"])
    assert {p["metadata"]["uid"] for p in selected} == pod_uids(api, namespace, name)


# --------------------------------------------------------------------------------------------------
# Drift and deletion


def test_deleted_or_hand_edited_children_are_restored(
    cluster: DevCluster, api: KubeApi, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    name = "bert-drift"
    deploy(cluster, api, namespace, tmp_path, name, spec_for(replicas=1))

    service = api.child("services", namespace, name)
    assert service is not None
    started = time.monotonic()
    cluster.kubectl("delete", "service", name, "-n", namespace)
    restored = wait_until(
        "the Service to be re-created",
        lambda: (
            (s := api.child("services", namespace, name))
            and s["metadata"]["uid"] != service["metadata"]["uid"]
            and s
        ),
        timeout=RESTORE_SECONDS + 5,
    )
    elapsed = time.monotonic() - started
    assert elapsed <= RESTORE_SECONDS, f"the Service came back after {elapsed:.1f} s"
    assert restored["spec"]["ports"] == service["spec"]["ports"]

    deployment = api.child("deployments", namespace, name)
    assert deployment is not None
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    started = time.monotonic()
    edit = [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "evil:latest"}]
    cluster.kubectl("patch", "deployment", name, "-n", namespace, "--type=json", "-p", json.dumps(edit))
    wait_until(
        "the hand-edited image to be put back",
        lambda: (
            (d := api.child("deployments", namespace, name))
            and d["spec"]["template"]["spec"]["containers"][0]["image"] == image
        ),
        timeout=RESTORE_SECONDS + 5,
    )
    elapsed = time.monotonic() - started
    assert elapsed <= RESTORE_SECONDS, f"the Deployment was restored after {elapsed:.1f} s"

    uid = deployment["metadata"]["uid"]
    started = time.monotonic()
    cluster.kubectl("delete", "deployment", name, "-n", namespace, "--wait=false")
    wait_until(
        "the Deployment to be re-created",
        lambda: (d := api.child("deployments", namespace, name)) and d["metadata"]["uid"] != uid,
        timeout=RESTORE_SECONDS + 5,
    )
    elapsed = time.monotonic() - started
    assert elapsed <= RESTORE_SECONDS, f"the Deployment came back after {elapsed:.1f} s"
    wait_ready(api, namespace, name)


# --------------------------------------------------------------------------------------------------
# Examples


EXAMPLES = example_model_deployments()


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.id for example in EXAMPLES])
def test_example_is_served(
    cluster: DevCluster,
    api: KubeApi,
    operator: OperatorProcess,
    namespace: str,
    example: Example,
    tmp_path: Path,
) -> None:
    """``kubectl apply -f examples/...`` into this test's namespace: Ready, with the children it asks for."""
    name = example.manifest["metadata"]["name"]
    spec = example.manifest["spec"]
    volumes = []
    if (spec.get("cache") or {}).get("size"):
        volumes.append(reserve_volume(cluster, namespace, f"{name}-cache"))
    try:
        if example.namespaced:
            apply_objects(cluster, namespace, tmp_path, example.manifest)
        else:
            cluster.kubectl("apply", "-n", namespace, "-f", str(example.path))
        md = wait_ready(api, namespace, name, timeout=READY_TIMEOUT + 30)
    finally:
        for volume in volumes:
            cluster.kubectl("delete", "persistentvolume", volume, "--wait=false", check=False)
    uid = md["metadata"]["uid"]
    deployment = api.child("deployments", namespace, name)
    assert deployment is not None and owned_by(deployment, uid) and applied_by_us(deployment)
    service = api.child("services", namespace, name)
    assert service is not None and owned_by(service, uid) and applied_by_us(service)
    autoscaling = spec.get("autoscaling")
    engine = (autoscaling or {}).get("engine", "hpa")
    if autoscaling and engine == "hpa":
        hpa = api.child("horizontalpodautoscalers", namespace, name)
        assert hpa is not None and owned_by(hpa, uid) and applied_by_us(hpa)
    if autoscaling and engine == "keda":
        # No KEDA in this cluster: said so in the status, and no ScaledObject attempted.
        autoscaler = condition(md, "AutoscalerReady") or {}
        assert (autoscaler.get("status"), autoscaler.get("reason")) == ("False", "KedaNotInstalled"), (
            autoscaler
        )
    if (spec.get("cache") or {}).get("size"):
        claim = api.child("persistentvolumeclaims", namespace, f"{name}-cache")
        assert claim is not None and owned_by(claim, uid) and applied_by_us(claim)
        assert len(api.items("jobs", namespace, f"{NAME_LABEL}={name}")) == 1
    resources = spec.get("resources") or {}
    pods = pods_of(api, namespace, name)
    assert pods and all(running_ready(pod) for pod in pods)
    for pod in pods:
        node = next(n for n in cluster.nodes if n.name == pod["spec"]["nodeName"])
        assert node.gpus >= int(resources.get("gpus", 0))
        if resources.get("gpuProduct"):
            assert node.gpu_product == resources["gpuProduct"], f"{pod['metadata']['name']} on {node.name}"
    if resources.get("gpus"):
        limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == str(resources["gpus"])


# --------------------------------------------------------------------------------------------------
# A spec the apiserver accepts but the operator cannot deploy


def test_semantically_invalid_spec_gets_invalid_spec_and_an_event(
    cluster: DevCluster,
    api: KubeApi,
    rbac: ChartRbac,
    operator: OperatorProcess,
    namespace: str,
    tmp_path: Path,
) -> None:
    """CPU autoscaling measures utilisation against the CPU request; without one it cannot work.

    No CEL rule covers it (the API allows both fields separately); the operator's own check does.
    """
    name = "bert-invalid"
    spec = spec_for(autoscaling={"minReplicas": 1, "maxReplicas": 3, "metric": "cpu"})
    apply_objects(cluster, namespace, tmp_path, model_deployment(name, spec))

    def invalid() -> dict[str, Any] | None:
        md = api.model_deployment(namespace, name)
        ready = condition(md or {}, "Ready") or {}
        return md if ready.get("reason") == "InvalidSpec" else None

    md = wait_until("Ready=False/InvalidSpec", invalid, timeout=30)
    ready = condition(md, "Ready") or {}
    assert ready["status"] == "False"
    assert "spec.resources.requests.cpu" in ready["message"], ready
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
    assert md["status"]["phase"] == "Failed"

    def invalid_spec_event() -> list[dict[str, Any]]:
        return [
            event
            for event in api.items("events", namespace)
            if event["involvedObject"].get("name") == name and event.get("reason") == "InvalidSpec"
        ]

    (event,) = wait_until("an InvalidSpec Event", invalid_spec_event, timeout=10)
    assert event["type"] == "Warning" and "spec.resources.requests.cpu" in event["message"]
    assert api.child("deployments", namespace, name) is None, "an invalid spec must not be deployed"

    # No retry storm: once reported, the operator leaves the object alone.
    mark = cluster.audit_log.mark()
    time.sleep(5)
    storm = cluster.audit_log.writes(user=rbac.user, since=mark)
    assert not storm, [(e.verb, e.resource, e.subresource, e.name) for e in storm]
    assert operator.running and operator.healthy()

    # And the same object recovers as soon as the spec is fixed.
    patch_md(cluster, namespace, name, {"spec": {"resources": {"requests": {"cpu": "1"}}}})
    wait_ready(api, namespace, name)


# --------------------------------------------------------------------------------------------------
# Model cache


@pytest.fixture
def cache_volume(cluster: DevCluster, namespace: str) -> Iterator[str]:
    """A PersistentVolume for the cache claim of ModelDeployment ``bert-cache``."""
    name = reserve_volume(cluster, namespace, "bert-cache-cache")
    yield name
    cluster.kubectl("delete", "persistentvolume", name, "--wait=false", check=False)


def test_cache_is_built_once_by_a_job_and_mounted_read_only(
    cluster: DevCluster,
    api: KubeApi,
    operator: OperatorProcess,
    namespace: str,
    cache_volume: str,
    tmp_path: Path,
) -> None:
    name = "bert-cache"
    md = deploy(
        cluster,
        api,
        namespace,
        tmp_path,
        name,
        spec_for(replicas=1, cache={"size": "5Gi"}),
        timeout=READY_TIMEOUT + 30,
    )
    uid = md["metadata"]["uid"]
    selector = f"{NAME_LABEL}={name}"

    claim = api.child("persistentvolumeclaims", namespace, f"{name}-cache")
    assert claim is not None and owned_by(claim, uid) and applied_by_us(claim)
    assert claim["status"]["phase"] == "Bound" and claim["spec"]["volumeName"] == cache_volume
    (job,) = api.items("jobs", namespace, selector)
    assert owned_by(job, uid) and applied_by_us(job)
    assert (job.get("status") or {}).get("succeeded") == 1
    assert (condition(md, "ModelRepositoryReady") or {}).get("status") == "True"
    digest = md["status"]["modelRepository"]["digest"]
    assert job["metadata"]["name"].startswith(f"{name}-build-") and digest[:12] in job["metadata"]["name"]

    (pod,) = pods_of(api, namespace, name)
    claims = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims and all(v["persistentVolumeClaim"].get("readOnly") for v in claims), pod["spec"]["volumes"]
    assert not pod["spec"].get("initContainers"), "with a cache the pods must not build"

    # Scaling up reuses the repository: no second build.
    cluster.kubectl("scale", f"mdeploy/{name}", "-n", namespace, "--replicas=3")
    wait_deployment_rolled_out(api, namespace, name, 3)
    assert [j["metadata"]["uid"] for j in api.items("jobs", namespace, selector)] == [job["metadata"]["uid"]]

    # A new revision is a new repository: a new build Job, then the pods roll onto it.
    old_pods = pod_uids(api, namespace, name)
    patch_md(cluster, namespace, name, {"spec": {"model": {"revision": REVISION_2}}})
    md = wait_ready(api, namespace, name, timeout=READY_TIMEOUT + 30)
    new_digest = md["status"]["modelRepository"]["digest"]
    assert new_digest != digest
    jobs = {j["metadata"]["name"] for j in api.items("jobs", namespace, selector)}
    assert any(new_digest[:12] in job_name for job_name in jobs), jobs
    wait_deployment_rolled_out(api, namespace, name, 3)
    wait_until(
        "the pods to roll onto the new repository", lambda: not pod_uids(api, namespace, name) & old_pods
    )


# --------------------------------------------------------------------------------------------------
# Garbage collection. Last in the module on purpose: the controller-manager's garbage collector
# rediscovers API resources every 30 s, so for up to 30 s after the CRD is installed it does not yet
# follow ModelDeployment owners; by the end of the module it long does.


def test_deleting_the_model_deployment_garbage_collects_every_child(
    cluster: DevCluster, api: KubeApi, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    name = "bert-gc"
    spec = spec_for(autoscaling={"minReplicas": 2, "maxReplicas": 3})
    apply_objects(cluster, namespace, tmp_path, model_deployment(name, spec))
    wait_until(
        "2 pods running",
        lambda: len([p for p in pods_of(api, namespace, name) if running_ready(p)]) == 2,
        timeout=READY_TIMEOUT,
    )
    kinds = (
        "deployments",
        "replicasets",
        "services",
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
        "pods",
    )
    selector = f"{NAME_LABEL}={name}"
    for resource in ("deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets"):
        assert api.items(resource, namespace, selector), f"no {resource} before the deletion"

    cluster.kubectl("delete", "modeldeployment", name, "-n", namespace, "--wait=false")

    def all_gone() -> bool:
        return not any(
            [
                o
                for o in api.items(resource, namespace, selector)
                if not o["metadata"].get("deletionTimestamp")
            ]
            for resource in kinds
        )

    wait_until("every child to be garbage-collected", all_gone, timeout=60)
    # And the operator did not bring any of them back.
    time.sleep(2)
    assert all_gone()


# --------------------------------------------------------------------------------------------------
# When a model is not Ready: each failure produced for real (the scheduler, the ReplicaSet controller
# against a ResourceQuota, the PV controller, and KWOK Stages for what a kubelet would report; see
# modeldeploy_dev.devcluster.FAULT_STATUS), and what the status, `kubectl get`, the Events and the GitOps
# health checks say about it.

gitops_health = load_gitops_health()
FAILURE_TIMEOUT = 45.0


def wait_reason(api: KubeApi, namespace: str, name: str, reason: str, fragment: str) -> dict[str, Any]:
    """The ModelDeployment once its current generation's status has `reason` and a message with
    `fragment` (a message may first say something less specific, e.g. before the pods exist)."""

    def reported() -> dict[str, Any] | None:
        md = api.model_deployment(namespace, name)
        status = (md or {}).get("status") or {}
        current = md is not None and status.get("observedGeneration") == md["metadata"]["generation"]
        return (
            md
            if current and status.get("reason") == reason and fragment in status.get("message", "")
            else None
        )

    try:
        return wait_until(f"{namespace}/{name} reason {reason}", reported, FAILURE_TIMEOUT)
    except AssertionError as err:
        md = api.model_deployment(namespace, name)
        raise AssertionError(f"{err}; status: {json.dumps((md or {}).get('status'), indent=1)}") from None


def assert_reported(
    cluster: DevCluster,
    api: KubeApi,
    namespace: str,
    name: str,
    *,
    reason: str,
    phase: str,
    fragment: str,
    warnings: int = 1,
) -> dict[str, Any]:
    """Reason, phase, message, the REASON column, the Events and Argo CD / Flux health of a failure."""
    md = wait_reason(api, namespace, name, reason, fragment)
    status = md["status"]
    assert status["phase"] == phase, status
    ready = condition(md, "Ready") or {}
    assert ready["status"] == "False" and ready["reason"] == reason and fragment in ready["message"], ready
    assert "\n" not in status["message"]

    table = cluster.kubectl("get", "mdeploy", name, "-n", namespace).stdout.splitlines()
    row = dict(zip(table[0].split(), table[1].split(), strict=False))
    assert (row["READY"], row["PHASE"], row["REASON"]) == ("False", phase, reason), table

    # One Event per change of Ready: progress is Normal, the failure one Warning (not one per pod, not
    # one per condition). Posted right after the status write, so give it a moment.
    def warned() -> list[dict[str, Any]] | None:
        events = events_of(api, namespace, md["metadata"]["uid"])
        return events if any(e["type"] == "Warning" and e["reason"] == reason for e in events) else None

    events = wait_until(f"a Warning Event {reason}", warned, timeout=10)
    assert all(e["source"]["component"] == "modeldeploy" for e in events), events
    failures = [e for e in events if e["type"] == "Warning"]
    assert [e["reason"] for e in failures] == [reason] * warnings, [(e["type"], e["reason"]) for e in events]
    assert failures[-1]["message"].startswith("Ready is False: ")
    # A repeat (the same reason again, e.g. RollingOut before and after Serving) bumps the first Event's
    # count instead of adding one.
    kinds = [(e["type"], e["reason"]) for e in events]
    assert len(set(kinds)) == len(kinds) and len(events) <= warnings + 4, kinds

    argo, argo_message = gitops_health.argocd_health(md)
    assert argo == "Degraded" and fragment in argo_message, (argo, argo_message)
    assert gitops_health.flux_health(md) == "Failed"
    return md


def test_a_gpu_product_no_node_has_and_more_gpus_than_any_node_are_unschedulable(
    cluster: DevCluster, api: KubeApi, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    """The issue's two first-user cases: never `Building`; the scheduler's own words and the nodes'."""
    apply_objects(
        cluster,
        namespace,
        tmp_path,
        model_deployment("bert-b200", spec_for(gpus=1, gpu_product="NVIDIA-B200")),
        model_deployment("bert-16", spec_for(gpus=16)),
    )
    for name, early in (
        (
            "bert-b200",
            f"no node has nvidia.com/gpu.product=NVIDIA-B200 (products in the cluster: {A100}, {H100})",
        ),
        ("bert-16", "no node has 16 allocatable nvidia.com/gpu (the most is 8 on gpu-a100-0)"),
    ):
        md = assert_reported(
            cluster,
            api,
            namespace,
            name,
            reason="Unschedulable",
            phase="Failed",
            fragment="1 of 1 pods cannot be scheduled: 0/3 nodes are available",
        )
        # The scheduler's words, and what the nodes tell (which products exist, how many GPUs the biggest
        # node has); the nodes alone say so at once if the status is computed before any pod exists.
        assert early in md["status"]["message"], md["status"]["message"]
        assert (condition(md, "ModelRepositoryReady") or {}).get("reason") == "NotStarted"
    assert "affinity/selector" in (md_of(api, namespace, "bert-b200")["status"]["message"])
    assert "Insufficient nvidia.com/gpu" in (md_of(api, namespace, "bert-16")["status"]["message"])


@pytest.mark.parametrize(
    ("fault", "extra", "reason", "fragment"),
    [
        (
            "image-pull",
            {"triton": {"image": "registry.invalid/tritonserver:typo"}},
            "ImagePullFailed",
            "1 of 1 pods cannot pull an image: cannot pull image registry.invalid/tritonserver:typo "
            "(ImagePullBackOff)",
        ),
        (
            "crash",
            {},
            "ModelLoadFailed",
            "1 of 1 pods fail to load the model: Triton exited: "
            "2026-01-01T00:00:01Z E 1 model_lifecycle.cc:654] failed to load 'model' version 1",
        ),
        (
            "oom",
            {"resources": {"gpus": 0, "limits": {"memory": "8Gi"}}},
            "OutOfMemory",
            "1 of 1 pods run out of memory: container triton was OOMKilled at its memory limit of 8Gi; "
            "raise spec.resources.limits.memory",
        ),
    ],
)
def test_what_the_kubelet_reports_is_named(
    cluster: DevCluster,
    api: KubeApi,
    operator: OperatorProcess,
    namespace: str,
    tmp_path: Path,
    fault: str,
    extra: dict[str, Any],
    reason: str,
    fragment: str,
) -> None:
    """KWOK Stages (selected by the pod template's modeldeploy.dev/name label) play the kubelet."""
    name = f"{FAULT_PREFIX}{fault}-bert"
    apply_objects(cluster, namespace, tmp_path, model_deployment(name, {**spec_for(), **extra}))
    md = assert_reported(cluster, api, namespace, name, reason=reason, phase="Failed", fragment=fragment)
    # Nothing builds (the init container completed): never Building.
    assert (condition(md, "ModelRepositoryReady") or {}).get("reason") == "NotStarted"
    (pod,) = pods_of(api, namespace, name)
    triton = pod["spec"]["containers"][0]
    assert triton["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_a_resource_quota_refusing_the_pods_is_quota_exceeded(
    cluster: DevCluster, api: KubeApi, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-gpus"},
        "spec": {"hard": {"requests.nvidia.com/gpu": "0"}},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(quota))
    name = "bert-quota"
    apply_objects(cluster, namespace, tmp_path, model_deployment(name, spec_for(gpus=1, gpu_product=H100)))
    assert_reported(
        cluster,
        api,
        namespace,
        name,
        reason="QuotaExceeded",
        phase="Failed",
        fragment="the ReplicaSet cannot create pods: pods",
    )
    assert "exceeded quota: no-gpus" in md_of(api, namespace, name)["status"]["message"]
    assert not pods_of(api, namespace, name)


def test_a_cache_claim_with_a_missing_storage_class_is_cache_claim_pending(
    cluster: DevCluster, api: KubeApi, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    name = "bert-noclass"
    spec = spec_for(cache={"size": "5Gi", "storageClassName": "no-such-class"})
    apply_objects(cluster, namespace, tmp_path, model_deployment(name, spec))
    md = assert_reported(
        cluster,
        api,
        namespace,
        name,
        reason="CacheClaimPending",
        phase="Failed",
        fragment='ProvisioningFailed: storageclass.storage.k8s.io "no-such-class" not found',
    )
    # Waiting for the claim is not building.
    assert (condition(md, "ModelRepositoryReady") or {}).get("reason") == "CacheClaimPending"
    assert md["status"]["phase"] != "Building"


def test_a_rollout_stuck_behind_an_unschedulable_revision_says_the_old_one_still_serves(
    cluster: DevCluster, api: KubeApi, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    name = "bert-stuck"
    deploy(cluster, api, namespace, tmp_path, name, spec_for(replicas=2, gpus=1, gpu_product=H100))
    old_pods = pod_uids(api, namespace, name)
    patch_md(cluster, namespace, name, {"spec": {"resources": {"gpuProduct": "NVIDIA-B200"}}})
    md = assert_reported(
        cluster,
        api,
        namespace,
        name,
        reason="RolloutStuck",
        phase="Degraded",
        fragment="the new revision cannot come up (Unschedulable): 1 of 3 pods cannot be scheduled",
    )
    assert "the previous revision still serves (2 of 2 pods ready)" in md["status"]["message"]
    assert (condition(md, "Available") or {}).get("status") == "True"
    assert old_pods <= pod_uids(api, namespace, name), "the serving pods were kept"
    # And reverting the spec recovers.
    patch_md(cluster, namespace, name, {"spec": {"resources": {"gpuProduct": H100}}})
    wait_ready(api, namespace, name)
