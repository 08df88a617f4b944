"""`helm install charts/modeldeploy` into the real local control plane, then a ModelDeployment
reconciled under the installed chart's ServiceAccount and roles.

KWOK plays the kubelet, so the installed operator Deployment's pods are scheduled and marked Running but
run no container. The operator itself therefore runs here as a subprocess, with exactly the command line
and environment of the installed Deployment (ports aside) and a token of the ServiceAccount the chart
created: what is tested is everything the chart installs (CRDs, ServiceAccount, RBAC, peering objects,
Deployment) and that the operator can do its job with those permissions and nothing more.

The statuses the operator writes are then fed to the Argo CD and Flux health checks of
examples/gitops/.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy_dev.devcluster import DevCluster
from modeldeploy_dev.harness import (
    CHART_DIR,
    MODELDEPLOY_BIN,
    KubeApi,
    OperatorProcess,
    assert_no_forbidden,
    condition,
    create_namespace,
    is_ready,
    load_gitops_health,
    model_deployment,
    unique_name,
    wait_until,
)

pytestmark = pytest.mark.cluster

SOURCE = "hf://google-bert/bert-base-uncased"
REVISION = "86b5e0934494bd15c9632b12f734a8a67f723594"
READY_TIMEOUT = 90.0


gitops_health = load_gitops_health()


@dataclass
class ChartOperator(OperatorProcess):
    """The operator with the installed Deployment's own arguments instead of OperatorProcess's."""

    chart_args: Sequence[str] = ()

    def command(self) -> list[str]:
        args = list(self.chart_args)
        args[args.index("--health-port") + 1] = str(self.health_port)
        args[args.index("--metrics-port") + 1] = str(self.metrics_port)
        return [str(MODELDEPLOY_BIN), *args]


@dataclass
class Release:
    name: str
    namespace: str
    models_namespace: str
    values: dict[str, Any]

    @property
    def fullname(self) -> str:
        return f"{self.name}-modeldeploy"


def _helm(cluster: DevCluster, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.helm), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def _get(cluster: DevCluster, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return result


def _values(mode: str, models_namespace: str) -> dict[str, Any]:
    if mode == "all-namespaces":
        # One standalone operator for every namespace: a ClusterRole.
        return {}
    # Watched namespaces, two peering replicas: a Role per namespace, KopfPeering objects.
    return {"replicaCount": 2, "watchNamespaces": [models_namespace]}


@pytest.fixture(params=["all-namespaces", "namespaced-peering"])
def release(request: pytest.FixtureRequest, cluster: DevCluster, tmp_path: Path) -> Iterator[Release]:
    models_namespace = create_namespace(cluster, unique_name("helm-models"))
    values = _values(request.param, models_namespace)
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }
    installed = Release(unique_name("mdh"), unique_name("helm-system"), models_namespace, values)
    result = _helm(
        cluster,
        env,
        "install",
        installed.name,
        str(CHART_DIR),
        "--namespace",
        installed.namespace,
        "--create-namespace",
        "--values",
        str(values_file),
        "--wait",
        "--timeout",
        "120s",
    )
    assert result.returncode == 0, f"helm install failed:\n{result.stdout}{result.stderr}"
    assert "modeldeploy 0.1.0 is installed" in result.stdout  # NOTES.txt
    try:
        yield installed
    finally:
        cluster.kubectl(
            "delete",
            "modeldeployments",
            "--all",
            "-n",
            models_namespace,
            "--wait=true",
            "--timeout=60s",
            check=False,
        )
        _helm(cluster, env, "uninstall", installed.name, "--namespace", installed.namespace, "--wait")
        for namespace in (installed.namespace, models_namespace):
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_helm_install_then_reconcile_with_the_chart_rbac(
    cluster: DevCluster, release: Release, api: KubeApi, tmp_path: Path
) -> None:
    # What the chart installed.
    for crd in ("modeldeployments.modeldeploy.dev", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        established = condition(_get(cluster, "crd", crd), "Established")
        assert established is not None and established["status"] == "True", crd
    deployment = _get(cluster, "deployment", release.fullname, "-n", release.namespace)
    replicas = release.values.get("replicaCount", 1)
    assert deployment["status"].get("availableReplicas") == replicas
    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
    pods = _get(cluster, "pods", "-n", release.namespace, "-l", selector)["items"]
    assert len(pods) == replicas and all(pod["spec"].get("nodeName") for pod in pods)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args: list[str] = container["args"]
    service_account = deployment["spec"]["template"]["spec"]["serviceAccountName"]

    models_namespace = release.models_namespace
    watched = release.values.get("watchNamespaces") or []
    if watched:
        assert args[args.index("--namespace") + 1] == models_namespace
        peering = args[args.index("--peering") + 1]
        _get(cluster, "kopfpeering", peering, "-n", models_namespace)
    else:
        assert "--all-namespaces" in args and "--standalone" in args

    # The operator, as the installed Deployment runs it, with the ServiceAccount's token.
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    assert set(env) >= {"MODELDEPLOY_TRITON_IMAGE", "MODELDEPLOY_BUILDER_IMAGE"}
    pod_id = f"{release.name}-local"
    kubeconfig = cluster.service_account_kubeconfig(release.namespace, service_account)
    user = f"system:serviceaccount:{release.namespace}:{service_account}"
    mark = cluster.audit_log.mark()
    operator = ChartOperator(
        kubeconfig,
        tmp_path / "operator.log",
        extra_env={**env, "POD_ID": pod_id},
        chart_args=args,
    )
    with operator:
        good = model_deployment(
            "bert", {"model": {"source": SOURCE, "revision": REVISION, "task": "fill-mask"}, "replicas": 1}
        )
        # Passes admission, but the operator refuses it: cpu autoscaling needs a CPU request.
        bad = model_deployment(
            "bert-cpu-hpa",
            {
                "model": {"source": SOURCE, "revision": REVISION, "task": "fill-mask"},
                "autoscaling": {"maxReplicas": 2, "metric": "cpu"},
            },
        )
        listing = {"apiVersion": "v1", "kind": "List", "items": [good, bad]}
        cluster.kubectl("apply", "-n", models_namespace, "-f", "-", input=json.dumps(listing))

        ready = wait_until(
            "the ModelDeployment Ready under the chart's RBAC",
            lambda: md if (md := api.model_deployment(models_namespace, "bert")) and is_ready(md) else None,
            READY_TIMEOUT,
        )

        def invalid() -> dict[str, Any] | None:
            md = api.model_deployment(models_namespace, "bert-cpu-hpa")
            found = condition(md, "Ready") if md else None
            return md if found and found.get("reason") == "InvalidSpec" else None

        rejected = wait_until("Ready=False/InvalidSpec", invalid, READY_TIMEOUT)

        if watched:
            # kopf keeps its keep-alive in the KopfPeering: the chart's `patch` on kopfpeerings works.
            wait_until(
                "the operator's keep-alive in the KopfPeering",
                lambda: (
                    pod_id
                    in (_get(cluster, "kopfpeering", peering, "-n", models_namespace).get("status") or {})
                ),
                30,
            )
        assert operator.running, operator.log_tail()
        assert_no_forbidden(cluster, operator, user, since=mark)

    # The GitOps health checks on statuses the operator really wrote.
    assert gitops_health.argocd_health(ready)[0] == "Healthy"
    assert gitops_health.flux_health(ready) == "Current"
    status, message = gitops_health.argocd_health(rejected)
    assert status == "Degraded" and "spec.autoscaling" in message, (status, message)
    assert gitops_health.flux_health(rejected) == "Failed"
