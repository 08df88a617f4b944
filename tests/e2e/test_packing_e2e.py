"""A ModelServer and three ModelDeployments placed on it, with the operator running under the chart's RBAC
against the real local control plane (KWOK plays the kubelet, so no Triton runs: what is tested is every
object the operator writes, up to the container runtime).

Not covered here, because KWOK runs no builder: the memory a build records (its termination message), so
no placed model is ever listed for loading and the fit reason never arises; those are tested on the
FakeCluster (tests/operator/test_model_server.py) and with the real tritonserver
(tests/model_repo/test_packing_serving.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modeldeploy_dev.devcluster import DevCluster
from modeldeploy_dev.harness import (
    ChartRbac,
    KubeApi,
    OperatorProcess,
    apply_objects,
    assert_no_forbidden,
    chart_rbac_installed,
    models_namespace,
    reserve_volume,
    wait_until,
)

pytestmark = pytest.mark.cluster

SERVERS_PATH = "/apis/modeldeploy.dev/v1alpha1/namespaces/{namespace}/modelservers/{name}"
MODEL = {"source": "hf://sentence-transformers/all-MiniLM-L6-v2", "task": "feature-extraction"}


@pytest.fixture(scope="module")
def rbac(cluster: DevCluster) -> Iterator[ChartRbac]:
    with chart_rbac_installed(cluster, release="md-packing") as chart_rbac:
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/modelservers.modeldeploy.dev", "--timeout=60s"
        )
        yield chart_rbac


def test_server_with_three_placed_models_runs_one_deployment_and_forgets_a_deleted_model(
    cluster: DevCluster, api: KubeApi, rbac: ChartRbac, operator: OperatorProcess, tmp_path: Path
) -> None:
    mark = cluster.audit_log.mark()
    with models_namespace(cluster, "packing") as namespace:
        volume = reserve_volume(cluster, namespace, "shared-models")
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "shared-models"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "resources": {"requests": {"storage": "10Gi"}},
            },
        }
        server = {
            "apiVersion": "modeldeploy.dev/v1alpha1",
            "kind": "ModelServer",
            "metadata": {"name": "encoders"},
            "spec": {"capacity": "8Gi", "cache": {"claimName": "shared-models"}},
        }
        models = [
            {
                "apiVersion": "modeldeploy.dev/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": name},
                "spec": {"model": MODEL, "server": {"name": "encoders"}},
            }
            for name in ("alpha", "beta", "gamma")
        ]
        apply_objects(cluster, namespace, tmp_path, claim, server, *models)
        path = SERVERS_PATH.format(namespace=namespace, name="encoders")

        def listed(names: set[str]) -> dict[str, Any] | None:
            body = api.get(path)
            entries = ((body or {}).get("status") or {}).get("models") or []
            return body if {entry["name"] for entry in entries} == names else None

        body = wait_until("the server lists its three models", lambda: listed({"alpha", "beta", "gamma"}), 90)
        deployments = api.items("deployments", namespace)
        assert [d["metadata"]["name"] for d in deployments] == ["encoders"], "one Deployment for every model"
        pod = deployments[0]["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert [c["name"] for c in pod["containers"]] == ["triton", "agent"]
        assert api.get(f"/api/v1/namespaces/{namespace}/configmaps/encoders-models") is not None
        assert body["status"]["memorySummary"].endswith("/8.00 GiB")
        # Each placed model is built by a Job into the server's claim.
        jobs = api.items("jobs", namespace)
        assert len(jobs) == 3
        for job in jobs:
            volumes = job["spec"]["template"]["spec"]["volumes"]
            assert any(
                (v.get("persistentVolumeClaim") or {}).get("claimName") == "shared-models" for v in volumes
            )

        def reason(name: str) -> str | None:
            md = api.model_deployment(namespace, name)
            return ((md or {}).get("status") or {}).get("reason")

        # KWOK runs no builder, so no memory is recorded: the model waits to be placed, and says so.
        wait_until(
            "alpha reports why it is not loaded", lambda: reason("alpha") == "RepositoryNotBuilt" or None, 90
        )

        cluster.kubectl("delete", "modeldeployment", "gamma", "-n", namespace)
        wait_until("the server forgets gamma", lambda: listed({"alpha", "beta"}), 60)
        cluster.kubectl("delete", "persistentvolume", volume, "--wait=false", check=False)
    assert operator.running and operator.healthy(), operator.log_tail()
    assert_no_forbidden(cluster, operator, rbac.user, since=mark)
