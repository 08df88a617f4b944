"""Helpers for the Helm chart, Dockerfile and GitOps tests (the `helm` fixture is in conftest.py).

helm is the pinned binary that tests/cluster/build.sh builds from Go modules (the same one the cluster
harness uses; `MODELDEPLOY_CLUSTER_BIN_DIR` overrides its directory, as for the harness). `make test`
builds it before pytest runs, so the helm tests skip only when pytest runs on a machine that has not
built it, and say so.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from modeldeploy_dev.devcluster import build_script

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modeldeploy"
RELEASE = "md"
RELEASE_NAMESPACE = "modeldeploy-system"


def _pinned_versions() -> dict[str, str]:
    versions = {}
    for line in (ROOT / "tests" / "cluster" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key] = value
    return versions


# The chart targets the Kubernetes version of the local control plane the e2e tests install it into.
KUBE_VERSION = _pinned_versions()["K8S_VERSION"].removeprefix("v")
KUBE_MINOR_VERSION = ".".join(KUBE_VERSION.split(".")[:2])


def locate_helm() -> Path | None:
    override = os.environ.get("MODELDEPLOY_CLUSTER_BIN_DIR")
    if override:
        bin_dir = Path(override)
    else:
        script = build_script()
        if script is None:
            return None
        printed = subprocess.run(
            ["bash", str(script), "--print-bin-dir"], capture_output=True, text=True, check=True
        )
        bin_dir = Path(printed.stdout.strip())
    helm = bin_dir / "helm"
    return helm if os.access(helm, os.X_OK) else None


class Helm:
    def __init__(self, binary: Path, work_dir: Path) -> None:
        self.binary = binary
        self.work_dir = work_dir
        self._counter = 0
        # Keep helm away from the user's ~/.config, ~/.cache and kubeconfig: rendering is offline.
        self.env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(work_dir / "config"),
            "HELM_CACHE_HOME": str(work_dir / "cache"),
            "HELM_DATA_HOME": str(work_dir / "data"),
            "KUBECONFIG": str(work_dir / "no-kubeconfig"),
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, check=False, env=self.env, timeout=120
        )

    def values_file(self, values: Mapping[str, Any]) -> Path:
        self._counter += 1
        path = self.work_dir / f"values-{self._counter}.yaml"
        path.write_text(yaml.safe_dump(dict(values)))
        return path

    def template(
        self, values: Mapping[str, Any], *, namespace: str = RELEASE_NAMESPACE
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
            "--values",
            str(self.values_file(values)),
        )

    def render(
        self, values: Mapping[str, Any], *, namespace: str = RELEASE_NAMESPACE
    ) -> list[dict[str, Any]]:
        result = self.template(values, namespace=namespace)
        assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
