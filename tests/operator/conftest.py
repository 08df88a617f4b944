"""The real local control plane for the reconcile tests (same set-up as tests/e2e's `cluster`).

Defined here too because fixtures do not cross sibling test directories; a session that runs both
directories starts two clusters (seconds each once the binaries are built).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modeldeploy.devcluster import DevCluster, DevClusterError, ensure_binaries


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    try:
        bin_dir: Path = ensure_binaries(build=True)
        dev_cluster = DevCluster(tmp_path_factory.mktemp("dev-cluster"), bin_dir).start()
    except DevClusterError as err:
        pytest.fail(f"the local control plane is not available: {err}", pytrace=False)
    try:
        yield dev_cluster
    finally:
        dev_cluster.stop()
