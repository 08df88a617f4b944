"""End-to-end tests against the real local control plane: the `cluster` fixture (one per session) comes
from modeldeploy_dev.pytest_plugin, loaded for the whole suite by pyproject's pytest addopts."""

from __future__ import annotations

import pytest

from modeldeploy_dev.devcluster import DevCluster
from modeldeploy_dev.kubeapi import KubeApi


@pytest.fixture(scope="session")
def api(cluster: DevCluster) -> KubeApi:
    """The API as the admin, without a kubectl process per look."""
    return KubeApi(cluster.kubeconfig)
