"""End-to-end tests against the real local control plane: the `cluster` fixture (one per session) comes
from modeldeploy_dev.pytest_plugin, loaded for the whole suite by pyproject's pytest addopts. A module
that asks for `operator` defines `rbac`, the chart's RBAC it runs under."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modeldeploy_dev.devcluster import DevCluster
from modeldeploy_dev.harness import ChartRbac, OperatorProcess
from modeldeploy_dev.kubeapi import KubeApi


@pytest.fixture(scope="session")
def api(cluster: DevCluster) -> KubeApi:
    """The API as the admin, without a kubectl process per look."""
    return KubeApi(cluster.kubeconfig)


@pytest.fixture(scope="module")
def operator(
    cluster: DevCluster, rbac: ChartRbac, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """`modeldeploy operator --all-namespaces` under the module's chart RBAC, for the whole module."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    process = OperatorProcess(rbac.kubeconfig, log, scope=("--all-namespaces",))
    process.start()
    try:
        yield process
    finally:
        process.stop()
