"""The apiserver admits a ModelServer and a ModelDeployment placed on it, with the CRDs' own defaults (the
refusals are cases 34-36 of invalid/, checked by test_invalid_manifests.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modeldeploy_dev.devcluster import DevCluster
from modeldeploy_dev.harness import install_crds

pytestmark = pytest.mark.cluster

SERVER = {
    "apiVersion": "modeldeploy.dev/v1alpha1",
    "kind": "ModelServer",
    "metadata": {"name": "encoders"},
    "spec": {"resources": {"gpus": 1, "gpuProduct": "NVIDIA-L4"}, "cache": {"claimName": "shared-models"}},
}
PLACED = {
    "apiVersion": "modeldeploy.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "minilm"},
    "spec": {
        "model": {"source": "hf://sentence-transformers/all-MiniLM-L6-v2", "task": "feature-extraction"},
        "server": {"name": "encoders"},
    },
}


@pytest.mark.parametrize("manifest", [SERVER, PLACED], ids=["modelserver", "placed-modeldeployment"])
def test_valid_packing_objects_pass_admission_with_defaults(
    cluster: DevCluster, manifest: dict[str, object], tmp_path: Path
) -> None:
    install_crds(cluster)
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/modelservers.modeldeploy.dev", "--timeout=60s"
    )
    path = tmp_path / "object.json"
    path.write_text(json.dumps(manifest))
    proc = cluster.kubectl(
        "apply", "--dry-run=server", "-n", "default", "-o", "json", "-f", str(path), check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    admitted = json.loads(proc.stdout)
    if manifest["kind"] == "ModelServer":
        assert admitted["spec"]["replicas"] == 1 and admitted["spec"]["triton"]["agentIntervalSeconds"] == 5
    else:
        # The defaults the API server fills in must still satisfy the spec.server rule.
        assert admitted["spec"]["replicas"] == 1 and admitted["spec"]["resources"] == {"gpus": 0}
