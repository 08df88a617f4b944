"""The real KEDA operator against the local control plane: a process on this machine, built by
tests/cluster/build.sh from KEDA's Go module (the version crds.env pins for KEDA's CRDs), authenticated as
the ServiceAccount of KEDA's release manifests and bound to their RBAC (build.sh copies config/rbac from
the same module next to the binary), nothing more.

What it needs that a pod would get from KEDA's manifests is given here instead: its namespace (``keda``),
the namespace it watches (``WATCH_NAMESPACE``), and the serving certificate of its gRPC metrics service in a
``--cert-dir`` (the files of the ``kedaorg-certs`` Secret), signed by the cluster CA. KEDA's metrics adapter
and admission webhooks do not run: the operator alone reads its scalers and activates or deactivates the
scale target (0 <-> minimum replicas); the replica counts past that come from the HorizontalPodAutoscaler it
creates, whose external metrics the absent adapter would serve.

The CRDs must be installed first (tests/cluster/crds.sh fetches all of KEDA's: the operator watches each).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from model_repo.triton import free_ports, http_ok, stop_process_group
from modeldeploy_dev.devcluster import DevCluster, DevClusterError
from modeldeploy_dev.harness import wait_until

KEDA_OPERATOR = "keda-operator"
KEDA_RBAC_FILE = "keda-operator-rbac.yaml"
# The namespace and ServiceAccount that KEDA's release RBAC binds (config/rbac/role_binding.yaml).
KEDA_NAMESPACE = "keda"
KEDA_SERVICE_ACCOUNT = "keda-operator"
# The Service the release puts in front of the operator's gRPC metrics service, which its certificate names.
KEDA_OPERATOR_DNS = f"{KEDA_OPERATOR}.{KEDA_NAMESPACE}.svc"


class KedaOperator:
    """``with KedaOperator(cluster, directory, watch_namespace) as keda: ...`` runs the operator for
    ``watch_namespace`` only (other tests' objects stay KEDA-free); its log is ``keda.log_path``."""

    def __init__(self, cluster: DevCluster, directory: Path, watch_namespace: str) -> None:
        self.cluster = cluster
        self.directory = directory
        self.watch_namespace = watch_namespace
        self.binary = cluster.bin_dir / KEDA_OPERATOR
        self.log_path = directory / f"{KEDA_OPERATOR}.log"
        self.health_port = 0
        self._popen: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> KedaOperator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self, ready_timeout: float = 60.0) -> KedaOperator:
        rbac = self.cluster.bin_dir / KEDA_RBAC_FILE
        if not os.access(self.binary, os.X_OK) or not rbac.is_file():
            missing = f"{self.cluster.bin_dir} lacks {KEDA_OPERATOR} or {KEDA_RBAC_FILE}"
            raise DevClusterError(f"{missing}: run tests/cluster/build.sh")
        self.directory.mkdir(parents=True, exist_ok=True)
        kubeconfig = self._service_account(rbac)
        certs = self.directory / "certs"
        self.cluster.issue_serving_certificate(KEDA_OPERATOR, (KEDA_OPERATOR_DNS, "localhost"), certs)
        # Scalers' extra CA certificates (none here); the default, /custom/ca, is a pod's mount.
        (self.directory / "ca").mkdir(exist_ok=True)
        metrics_port, self.health_port, grpc_port = free_ports(3)
        command = [
            str(self.binary),
            f"--metrics-bind-address=127.0.0.1:{metrics_port}",
            f"--health-probe-bind-address=127.0.0.1:{self.health_port}",
            f"--metrics-service-bind-address=127.0.0.1:{grpc_port}",
            f"--cert-dir={certs}",
            f"--ca-dir={self.directory / 'ca'}",
            "--zap-log-level=info",
            "--zap-encoder=console",
            "--zap-time-encoding=rfc3339",
        ]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "KUBECONFIG": str(kubeconfig),
            "WATCH_NAMESPACE": self.watch_namespace,
            # Where a pod of the release would run: its Secrets (TriggerAuthentication's cluster objects).
            "KEDA_CLUSTER_OBJECT_NAMESPACE": KEDA_NAMESPACE,
            "POD_NAMESPACE": KEDA_NAMESPACE,
        }
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {' '.join(command)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.directory,
                start_new_session=True,
            )
        try:
            wait_until(
                f"the KEDA operator's /readyz on port {self.health_port}",
                lambda: not self.running or http_ok(f"http://127.0.0.1:{self.health_port}/readyz"),
                ready_timeout,
            )
        except AssertionError as err:
            self.stop()
            raise AssertionError(f"{err}\n--- KEDA operator log ---\n{self.log_tail()}") from None
        if not self.running:
            raise AssertionError(f"the KEDA operator exited at start-up:\n{self.log_tail()}")
        return self

    def _service_account(self, rbac: Path) -> Path:
        """KEDA's namespace, ServiceAccount and release RBAC; a kubeconfig as that ServiceAccount."""
        objects = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEDA_NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": KEDA_SERVICE_ACCOUNT, "namespace": KEDA_NAMESPACE},
            },
            *(obj for obj in yaml.safe_load_all(rbac.read_text()) if obj),
        ]
        self.cluster.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
        )
        kubeconfig = self.cluster.service_account_kubeconfig(
            KEDA_NAMESPACE, KEDA_SERVICE_ACCOUNT, self.directory / "kubeconfig"
        )

        # The operator's first lists fail (and back off) while the new bindings are not yet in force.
        def bound() -> bool:
            answer = self.cluster.kubectl(
                "auth", "can-i", "update", "scaledobjects.keda.sh/status",
                "-n", self.watch_namespace, kubeconfig=kubeconfig, check=False,
            )  # fmt: skip
            return answer.stdout.strip() == "yes"

        wait_until(f"ServiceAccount {KEDA_NAMESPACE}/{KEDA_SERVICE_ACCOUNT}'s RBAC in force", bound, 30)
        return kubeconfig

    def stop(self, timeout: float = 15.0) -> None:
        if self._popen is not None:
            stop_process_group(self._popen, timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
