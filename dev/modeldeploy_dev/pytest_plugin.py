"""The real local control plane as a pytest fixture, one per test session (see modeldeploy_dev.devcluster).

Loaded for the whole suite by `-p modeldeploy_dev.pytest_plugin` (pyproject's pytest addopts), so the
end-to-end and the reconcile tests share one cluster instead of starting one per test directory.

``cluster`` (session scope) is a running :class:`modeldeploy_dev.devcluster.DevCluster`:

- ``cluster.kubeconfig: Path`` — admin kubeconfig (client certificate, group system:masters)
- ``cluster.server: str`` — the apiserver URL, ``https://127.0.0.1:<port>``
- ``cluster.kubectl(*args, check=True, input=None) -> CompletedProcess[str]`` — the pinned kubectl as admin
- ``cluster.bin_dir: Path`` — kubectl, helm, kube-apiserver, ... of the pinned versions
  (``cluster.helm`` is the helm binary)
- ``cluster.audit_log`` — :class:`modeldeploy_dev.devcluster.AuditLog`: ``mark()`` then
  ``writes(user=..., since=mark)`` counts write requests (create/update/patch/delete) by user
- ``cluster.service_account_kubeconfig(namespace, name) -> Path`` — a kubeconfig for a ServiceAccount
  (TokenRequest), to run a client with exactly the RBAC bound to it
- ``cluster.nodes`` — the fake nodes: two GPU products and one CPU-only node (KWOK keeps them Ready and
  marks their pods Running)

The binaries are built (once, into the cache outside the repository) by tests/cluster/build.sh; without
Go the fixture fails with build.sh's message rather than skipping, since these tests are the point.

It also keeps the tiers honest (a test using ``cluster`` is marked ``cluster``; one not marked ``triton``
cannot start tritonserver), and skips the tests marked ``bf16`` (bfloat16 served on the CPU) where the
CPU has no bf16 arithmetic, with that reason: the builder refuses bfloat16 there, which tests with a given
cpuinfo check on every machine. ``MODELDEPLOY_CPUINFO=<file>`` runs the suite as on the CPU that file
describes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from model_repo.runtime.model import this_cpu_has_native_bfloat16
from modeldeploy_dev.devcluster import DevCluster, DevClusterError, ensure_binaries


@pytest.fixture(scope="session")
def cluster_bin_dir() -> Path:
    """The pinned control-plane binaries, built first if this machine has not built them yet."""
    try:
        return ensure_binaries(build=True)
    except DevClusterError as err:
        pytest.fail(f"cannot build the local control plane: {err}", pytrace=False)


@pytest.fixture(scope="session")
def cluster(cluster_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    state_dir = tmp_path_factory.mktemp("dev-cluster")
    try:
        dev_cluster = DevCluster(state_dir, cluster_bin_dir).start()
    except DevClusterError as err:
        pytest.fail(f"the local control plane did not start: {err}", pytrace=False)
    try:
        yield dev_cluster
    finally:
        dev_cluster.stop()


NO_BF16 = "this CPU has no bf16 arithmetic (avx512_bf16, amx_bf16 or bf16 in /proc/cpuinfo)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    bf16 = this_cpu_has_native_bfloat16()
    for item in items:
        # `make test-fast` (-m "not triton and not cluster") must not start the control plane: whatever
        # uses it is in the cluster tier, marked or not.
        if "cluster" in getattr(item, "fixturenames", ()) and item.get_closest_marker("cluster") is None:
            item.add_marker(pytest.mark.cluster)
        if not bf16 and item.get_closest_marker("bf16") is not None:
            item.add_marker(pytest.mark.skip(reason=NO_BF16))


@pytest.fixture(autouse=True)
def _tritonserver_only_in_the_triton_tier(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test not marked `triton` that starts tritonserver itself fails, naming the marker, so that the
    fast tier (`make test-fast`) stays without Triton. (Module fixtures start before this check; the tests
    that use them are marked.)"""
    if request.node.get_closest_marker("triton") is not None:
        return
    from model_repo.triton import TritonServer

    def refuse(server: TritonServer) -> None:
        raise AssertionError(f"{request.node.nodeid} starts tritonserver: mark it pytest.mark.triton")

    monkeypatch.setattr(TritonServer, "start", refuse)
