"""Tests of the local control plane itself (the harness the operator's end-to-end tests run on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modeldeploy.labels import GPU_PRODUCT_LABEL, GPU_RESOURCE
from modeldeploy_dev.devcluster import (
    ADMIN_USER,
    DevCluster,
    DevClusterError,
    cluster_down,
    cluster_kubeconfig,
    devcluster_app,
)

pytestmark = pytest.mark.cluster

VERSIONS_FILE = Path(__file__).resolve().parents[1] / "cluster" / "versions.env"


def pinned_versions() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in VERSIONS_FILE.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.startswith("#")}


def get_json(cluster: DevCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def namespace(cluster: DevCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    # Pods are refused until the namespace's default ServiceAccount exists (ServiceAccount admission).
    wait_until(
        f"serviceaccount default in {name}",
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def test_server_and_kubectl_report_the_pinned_version(cluster: DevCluster) -> None:
    k8s = pinned_versions()["K8S_VERSION"]
    assert cluster.version()["gitVersion"] == k8s
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == k8s
    assert versions["serverVersion"]["gitVersion"] == k8s


def test_fake_nodes_are_ready_with_gpu_capacity_labels_and_taints(cluster: DevCluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in get_json(cluster, "nodes")["items"]}
    assert set(nodes) == {"gpu-a100-0", "gpu-h100-0", "cpu-0"}
    for node in nodes.values():
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["metadata"]["name"]

    products = {}
    for name in ("gpu-a100-0", "gpu-h100-0"):
        node = nodes[name]
        assert node["status"]["capacity"][GPU_RESOURCE] == "8"
        assert node["status"]["allocatable"][GPU_RESOURCE] == "8"
        assert {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"} in node["spec"]["taints"]
        products[name] = node["metadata"]["labels"][GPU_PRODUCT_LABEL]
    assert products == {"gpu-a100-0": "NVIDIA-A100-SXM4-80GB", "gpu-h100-0": "NVIDIA-H100-80GB-HBM3"}

    cpu = nodes["cpu-0"]
    assert GPU_RESOURCE not in cpu["status"]["capacity"]
    assert GPU_PRODUCT_LABEL not in cpu["metadata"]["labels"]
    assert not cpu["spec"].get("taints")


def gpu_deployment(name: str, product: str, *, tolerate_gpu_taint: bool = True) -> str:
    tolerations = (
        [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}] if tolerate_gpu_taint else []
    )
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [product]}
                                        ]
                                    }
                                ]
                            }
                        }
                    },
                    "tolerations": tolerations,
                    "containers": [
                        {
                            "name": "server",
                            "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
                            "resources": {"limits": {GPU_RESOURCE: "1"}},
                        }
                    ],
                },
            },
        },
    }
    return json.dumps(manifest)


def pods_of(cluster: DevCluster, namespace: str, app: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(cluster, "pods", "-n", namespace, "-l", f"app={app}")["items"]
    return items


def test_gpu_pods_land_on_the_node_with_the_requested_product_and_run(
    cluster: DevCluster, namespace: str
) -> None:
    for app, product in (
        ("on-h100", "NVIDIA-H100-80GB-HBM3"),
        ("on-a100", "NVIDIA-A100-SXM4-80GB"),
    ):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=gpu_deployment(app, product))
    for app, node in (("on-h100", "gpu-h100-0"), ("on-a100", "gpu-a100-0")):
        cluster.kubectl("rollout", "status", f"deployment/{app}", "-n", namespace, "--timeout=60s")
        (pod,) = pods_of(cluster, namespace, app)
        assert pod["spec"]["nodeName"] == node
        assert pod["status"]["phase"] == "Running"
        # The ReplicaSet between Deployment and Pod comes from the controller-manager.
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"


def test_gpu_pod_without_the_taint_toleration_is_not_scheduled(cluster: DevCluster, namespace: str) -> None:
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=gpu_deployment("intolerant", "NVIDIA-H100-80GB-HBM3", tolerate_gpu_taint=False),
    )

    def unschedulable() -> bool:
        pods = pods_of(cluster, namespace, "intolerant")
        conditions = pods[0].get("status", {}).get("conditions", []) if pods else []
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions)

    wait_until("the scheduler to report the pod Unschedulable", unschedulable)
    (pod,) = pods_of(cluster, namespace, "intolerant")
    assert not pod["spec"].get("nodeName")
    assert pod["status"]["phase"] == "Pending"


def test_deleting_an_owner_garbage_collects_its_dependent(cluster: DevCluster, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    owner = get_json(cluster, "configmap", "owner", "-n", namespace)
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
            ],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(dependent))
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace, "--cascade=background")
    wait_until(
        "the garbage collector to delete the dependent",
        lambda: (
            cluster.kubectl("get", "configmap", "dependent", "-n", namespace, check=False).returncode != 0
        ),
    )


def test_audit_log_counts_write_requests_by_user(cluster: DevCluster, namespace: str) -> None:
    cluster.kubectl("create", "serviceaccount", "writer", "-n", namespace)
    cluster.kubectl(
        "create", "role", "configmap-writer", "-n", namespace, "--verb=get,list,create,delete",
        "--resource=configmaps",
    )  # fmt: skip
    cluster.kubectl(
        "create", "rolebinding", "writer", "-n", namespace, "--role=configmap-writer",
        f"--serviceaccount={namespace}:writer",
    )  # fmt: skip
    sa_kubeconfig = cluster.service_account_kubeconfig(namespace, "writer")
    sa_user = f"system:serviceaccount:{namespace}:writer"

    def as_sa(*args: str) -> int:
        return cluster.kubectl(*args, "-n", namespace, check=False, kubeconfig=sa_kubeconfig).returncode

    mark = cluster.audit_log.mark()
    assert as_sa("create", "configmap", "a") == 0
    assert as_sa("create", "configmap", "b") == 0
    assert as_sa("get", "configmaps") == 0  # a read: not a write, not logged
    assert as_sa("delete", "configmap", "a") == 0
    # Outside the role: refused by RBAC, and the refused attempt is still logged with its 403.
    assert as_sa("create", "secret", "generic", "s", "--from-literal=k=v") != 0
    cluster.kubectl("create", "configmap", "by-admin", "-n", namespace)

    writes = cluster.audit_log.writes(user=sa_user, since=mark)
    assert [(w.verb, w.resource, w.name, w.code) for w in writes] == [
        ("create", "configmaps", "a", 201),
        ("create", "configmaps", "b", 201),
        ("delete", "configmaps", "a", 200),
        # A create names its object only in the body, which the apiserver never decoded for a refusal.
        ("create", "secrets", "", 403),
    ]
    admin_writes = cluster.audit_log.writes(user=ADMIN_USER, since=mark)
    assert [(w.verb, w.name) for w in admin_writes] == [("create", "by-admin")]
    assert all(e.verb != "get" and e.verb != "list" for e in cluster.audit_log.events(since=mark))


def processes_mentioning(text: str) -> list[str]:
    """Command lines of all live processes whose arguments contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_cli_up_kubeconfig_down_leave_no_process_behind(cluster_bin_dir: Path, tmp_path: Path) -> None:
    # `modeldeploy-dev cluster ...`: the components outlive `up` (detached) and `down`, run later,
    # finds them through the pids in the state dir.
    runner = CliRunner()
    state_dir = tmp_path / "detached"
    components = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
    up = runner.invoke(devcluster_app, ["up", "--state-dir", str(state_dir), "--no-build"])
    try:
        assert up.exit_code == 0, up.output
        kubeconfig = Path(up.stdout.strip())
        assert kubeconfig == state_dir / "kubeconfig"
        printed = runner.invoke(devcluster_app, ["kubeconfig", "--state-dir", str(state_dir)])
        assert printed.exit_code == 0 and printed.stdout.strip() == str(kubeconfig)

        attached = DevCluster.attach(state_dir)
        assert attached is not None
        assert sorted(attached.running()) == sorted(components)
        # Each component names the state dir in its arguments, so /proc finds them (and any child).
        assert len(processes_mentioning(str(state_dir))) >= len(components)
        nodes = attached.kubectl("get", "nodes", "-o", "name").stdout.split()
        assert len(nodes) == 3

        # A second `up` keeps the running cluster (same apiserver, same objects).
        attached.kubectl("create", "configmap", "survives-up")
        again = runner.invoke(devcluster_app, ["up", "--state-dir", str(state_dir), "--no-build"])
        assert again.exit_code == 0 and "already running" in again.stderr
        assert attached.kubectl("get", "configmap", "survives-up", check=False).returncode == 0
    finally:
        down = runner.invoke(devcluster_app, ["down", "--state-dir", str(state_dir)])
    assert down.exit_code == 0, down.output
    for name in components:
        assert name in down.stderr
    assert processes_mentioning(str(state_dir)) == []
    with pytest.raises(DevClusterError, match="no dev cluster is running"):
        cluster_kubeconfig(state_dir)
    assert runner.invoke(devcluster_app, ["kubeconfig", "--state-dir", str(state_dir)]).exit_code == 1
    # Down twice is harmless.
    assert cluster_down(state_dir) == []


def test_components_die_with_a_killed_test_session(cluster_bin_dir: Path, tmp_path: Path) -> None:
    # A session that is SIGKILLed never runs its teardown; the kernel must end the components anyway
    # (PR_SET_PDEATHSIG), or every crashed CI run would leave a control plane behind.
    state_dir = tmp_path / "orphaned"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from modeldeploy_dev.devcluster import DevCluster\n"
        "DevCluster(Path(sys.argv[1]), Path(sys.argv[2])).start()\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    session = subprocess.Popen(
        [sys.executable, "-c", script, str(state_dir), str(cluster_bin_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert session.stdout is not None
        assert session.stdout.readline().strip() == "ready"
        assert len(processes_mentioning(str(state_dir))) >= 5
    finally:
        session.kill()
        session.wait()
    wait_until(
        "the components to die with their parent",
        lambda: processes_mentioning(str(state_dir)) == [],
        timeout=15,
    )
