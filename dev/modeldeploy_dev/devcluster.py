"""A real, local Kubernetes control plane for development and end-to-end tests.

It runs the actual components, built from pinned Go modules by ``tests/cluster/build.sh`` (no Docker
needed): etcd, kube-apiserver (RBAC, service-account tokens, audit log), kube-controller-manager,
kube-scheduler, and the KWOK controller, which plays the kubelet for fake nodes so that pods get
scheduled and become Running without containers. Two fake GPU nodes of different products and one
CPU-only node are registered. The apiserver's aggregation layer is configured (front-proxy client
certificate, request-header CA); ``metrics_server=True`` also runs the real metrics-server behind it, with
KWOK serving each node's kubelet resource metrics, so that the HorizontalPodAutoscaler controller reads
pods' CPU use (:meth:`DevCluster.set_cpu_usage` sets it).

Everything binds to free loopback ports and lives in one state directory. Each component runs in its
own process group, whose pid is recorded in the state directory, so ``down`` from another process
finds and ends them all.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import typer
import yaml

from model_repo.triton import free_ports, http_ok
from modeldeploy.labels import GPU_PRODUCT_LABEL, GPU_RESOURCE
from modeldeploy_dev.kubeapi import KubeApi

COMPONENTS: Final = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
REQUIRED_BINARIES: Final = (*COMPONENTS, "kubectl")
METRICS_SERVER: Final = "metrics-server"
# What KWOK needs, next to its binary (tests/cluster/build.sh copies them from the pinned KWOK module), to
# play the kubelet's /metrics/resource: the Metric that serves it and the CRD of the usage it reports.
KWOK_METRIC_FILE: Final = "kwok-metrics-resource.yaml"
KWOK_USAGE_CRD_FILE: Final = "kwok-clusterresourceusages-crd.yaml"
METRICS_SERVER_FILES: Final = (METRICS_SERVER, KWOK_METRIC_FILE, KWOK_USAGE_CRD_FILE)

GPU_TAINT: Final = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
KWOK_NODE_ANNOTATION: Final = ("kwok.x-k8s.io/node", "fake")
# Where metrics-server finds a node's resource metrics; KWOK's Metric serves every node under one path.
RESOURCE_METRICS_PATH_ANNOTATION: Final = "metrics.k8s.io/resource-metrics-path"
METRICS_API_SERVICE: Final = "v1beta1.metrics.k8s.io"

SERVICE_CLUSTER_IP_RANGE: Final = "10.96.0.0/16"
POD_CIDR: Final = "10.244.0.0/16"
SERVICE_ACCOUNT_ISSUER: Final = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER: Final = "modeldeploy-admin"

# Marks a directory as one of ours, so that a fresh `up` may wipe it; anything else is refused.
_STATE_MARKER: Final = ".modeldeploy-dev-cluster"
_PIDS_FILE: Final = "pids.json"
_CLUSTER_FILE: Final = "cluster.json"

# Metadata (who, what, when, response code) for every write; nothing for reads, so that the log stays
# small and a test can count an operator's writes by user.
AUDIT_POLICY: Final = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
"""
WRITE_VERBS: Final = frozenset({"create", "update", "patch", "delete", "deletecollection"})


class DevClusterError(RuntimeError):
    """The local control plane could not be built, started, reached or stopped."""


@dataclass(frozen=True)
class FakeNode:
    """A node that KWOK keeps Ready; its capacity is what the scheduler sees."""

    name: str
    cpu: str = "32"
    memory: str = "256Gi"
    gpus: int = 0
    gpu_product: str | None = None
    extra_labels: Mapping[str, str] = field(default_factory=dict)

    def manifest(self, *, resource_metrics: bool = False) -> dict[str, Any]:
        """The Node; ``resource_metrics`` points metrics-server at KWOK's metrics for it."""
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            **self.extra_labels,
        }
        capacity = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": "110",
            "ephemeral-storage": "1Ti",
        }
        taints: list[dict[str, str]] = []
        if self.gpus:
            capacity[GPU_RESOURCE] = str(self.gpus)
            labels["nvidia.com/gpu.present"] = "true"
            labels["nvidia.com/gpu.count"] = str(self.gpus)
            # GPU nodes are usually tainted so that only pods asking for GPUs land there.
            taints.append(dict(GPU_TAINT))
        if self.gpu_product:
            labels[GPU_PRODUCT_LABEL] = self.gpu_product
        annotations = {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1], "node.alpha.kubernetes.io/ttl": "0"}
        if resource_metrics:
            annotations[RESOURCE_METRICS_PATH_ANNOTATION] = f"/metrics/nodes/{self.name}/metrics/resource"
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels, "annotations": annotations},
            "spec": {"taints": taints} if taints else {},
            "status": {
                "capacity": capacity,
                "allocatable": dict(capacity),
                "nodeInfo": {
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kubeletVersion": "fake",
                    "kubeProxyVersion": "fake",
                    "containerRuntimeVersion": "kwok",
                },
            },
        }


DEFAULT_NODES: Final = (
    FakeNode("gpu-a100-0", cpu="96", memory="1Ti", gpus=8, gpu_product="NVIDIA-A100-SXM4-80GB"),
    FakeNode("gpu-h100-0", cpu="96", memory="1Ti", gpus=8, gpu_product="NVIDIA-H100-80GB-HBM3"),
    FakeNode("cpu-0", cpu="32", memory="128Gi"),
)


# --------------------------------------------------------------------------------------------------
# Binaries


def default_cache_dir() -> Path:
    return Path(os.environ.get("MODELDEPLOY_CACHE") or Path.home() / ".cache" / "modeldeploy")


def default_state_dir() -> Path:
    return default_cache_dir() / "dev-cluster"


def build_script() -> Path | None:
    """``tests/cluster/build.sh`` of the source checkout this module was imported from, if any."""
    script = Path(__file__).resolve().parents[2] / "tests" / "cluster" / "build.sh"
    return script if script.is_file() else None


def _missing_binaries(bin_dir: Path) -> list[str]:
    return [name for name in REQUIRED_BINARIES if not os.access(bin_dir / name, os.X_OK)] + (
        [] if (bin_dir / "kwok-stages.yaml").is_file() else ["kwok-stages.yaml"]
    )


def ensure_binaries(*, build: bool = True) -> Path:
    """The directory holding the control-plane binaries, building them first if ``build``.

    ``MODELDEPLOY_CLUSTER_BIN_DIR`` points at a ready-made directory instead (no build).
    """
    override = os.environ.get("MODELDEPLOY_CLUSTER_BIN_DIR")
    if override:
        bin_dir = Path(override)
        missing = _missing_binaries(bin_dir)
        if missing:
            raise DevClusterError(f"MODELDEPLOY_CLUSTER_BIN_DIR={bin_dir} lacks {', '.join(missing)}")
        return bin_dir
    script = build_script()
    if script is None:
        raise DevClusterError(
            "the control-plane binaries are built by tests/cluster/build.sh of a source checkout; "
            "this installation has none, so set MODELDEPLOY_CLUSTER_BIN_DIR to a directory that holds "
            + ", ".join(REQUIRED_BINARIES)
        )
    if build:
        # The build log goes to our stderr as it happens: a first build takes many minutes.
        proc = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False)
        if proc.returncode != 0:
            raise DevClusterError(f"{script} failed (exit {proc.returncode}); see its messages above")
        bin_dir = Path(proc.stdout.strip().splitlines()[-1])
    else:
        printed = subprocess.run(
            ["bash", str(script), "--print-bin-dir"], capture_output=True, text=True, check=True
        )
        bin_dir = Path(printed.stdout.strip())
    missing = _missing_binaries(bin_dir)
    if missing:
        raise DevClusterError(f"{bin_dir} lacks {', '.join(missing)}; run {script}")
    return bin_dir


# --------------------------------------------------------------------------------------------------
# Certificates (openssl CLI, present wherever Kubernetes tooling is)


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DevClusterError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def _new_key(pki: Path, name: str) -> Path:
    # P-256 keys: generating them takes milliseconds, unlike RSA, and every component accepts them.
    key = pki / f"{name}.key"
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key.name, cwd=pki)
    key.chmod(0o600)
    return key


def _issue_cert(
    pki: Path,
    name: str,
    subject: str,
    *,
    client: bool = False,
    server_names: Sequence[str] = (),
    server_ips: Sequence[str] = (),
    ca: str = "ca",
) -> tuple[Path, Path]:
    key = _new_key(pki, name)
    csr = pki / f"{name}.csr"
    _openssl("req", "-new", "-key", key.name, "-subj", subject, "-out", csr.name, cwd=pki)
    usages = ["clientAuth"] if client else ["serverAuth"]
    extensions = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={','.join(usages)}",
    ]
    alt_names = [f"DNS:{n}" for n in server_names] + [f"IP:{ip}" for ip in server_ips]
    if alt_names:
        extensions.append(f"subjectAltName={','.join(alt_names)}")
    ext_file = pki / f"{name}.ext"
    ext_file.write_text("\n".join(extensions) + "\n")
    cert = pki / f"{name}.crt"
    _openssl(
        "x509", "-req", "-in", csr.name, "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-days", "365", "-sha256", "-extfile", ext_file.name, "-out", cert.name,
        cwd=pki,
    )  # fmt: skip
    csr.unlink()
    ext_file.unlink()
    return cert, key


def _new_ca(pki: Path, name: str, common_name: str) -> tuple[Path, Path]:
    key = _new_key(pki, name)
    _openssl(
        "req", "-x509", "-new", "-key", key.name, "-subj", f"/CN={common_name}",
        "-days", "365", "-sha256", "-out", f"{name}.crt",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=pki,
    )  # fmt: skip
    return pki / f"{name}.crt", key


@dataclass(frozen=True)
class _Pki:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path
    clients: Mapping[str, tuple[Path, Path]]
    # The aggregation layer: the apiserver proxies to extension API servers with the front-proxy client
    # certificate, which they trust through the request-header CA (a CA of its own, as kubeadm has it).
    front_proxy_ca_cert: Path
    front_proxy_client: tuple[Path, Path]
    metrics_server_serving: tuple[Path, Path]


# Identity (CN, O) of each client of the apiserver; distinct users keep the audit log readable.
_CLIENT_IDENTITIES: Final = {
    "admin": (ADMIN_USER, "system:masters"),
    "kube-controller-manager": ("system:kube-controller-manager", ""),
    "kube-scheduler": ("system:kube-scheduler", ""),
    "kwok": ("kwok-controller", "system:masters"),
    # Bound to the RBAC of metrics-server's own release manifests (metrics_server_objects), nothing more.
    "metrics-server": ("system:metrics-server", ""),
}
FRONT_PROXY_CLIENT: Final = "front-proxy-client"
METRICS_NAMESPACE: Final = "kube-system"
# The aggregator dials `<service>.<namespace>.svc` and checks the serving certificate for that name.
METRICS_SERVICE_DNS: Final = f"{METRICS_SERVER}.{METRICS_NAMESPACE}.svc"


def _make_pki(pki: Path) -> _Pki:
    pki.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _new_ca(pki, "ca", "modeldeploy-dev-cluster-ca")
    front_proxy_ca_cert, _ = _new_ca(pki, "front-proxy-ca", "modeldeploy-dev-cluster-front-proxy-ca")
    serving_cert, serving_key = _issue_cert(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        server_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        server_ips=("127.0.0.1", "10.96.0.1"),
    )
    sa_key = _new_key(pki, "service-account")
    _openssl("pkey", "-in", sa_key.name, "-pubout", "-out", "service-account.pub", cwd=pki)
    clients = {}
    for name, (common_name, organization) in _CLIENT_IDENTITIES.items():
        subject = f"/CN={common_name}" + (f"/O={organization}" if organization else "")
        clients[name] = _issue_cert(pki, f"client-{name}", subject, client=True)
    return _Pki(
        ca_cert=ca_cert,
        ca_key=ca_key,
        serving_cert=serving_cert,
        serving_key=serving_key,
        sa_key=sa_key,
        sa_pub=pki / "service-account.pub",
        clients=clients,
        front_proxy_ca_cert=front_proxy_ca_cert,
        front_proxy_client=_issue_cert(
            pki, FRONT_PROXY_CLIENT, f"/CN={FRONT_PROXY_CLIENT}", client=True, ca="front-proxy-ca"
        ),
        metrics_server_serving=_issue_cert(
            pki,
            "metrics-server",
            f"/CN={METRICS_SERVICE_DNS}",
            server_names=(METRICS_SERVICE_DNS, "localhost"),
            server_ips=("127.0.0.1",),
        ),
    )


def _kubeconfig_yaml(server: str, ca_cert: Path, user: str, user_entry: Mapping[str, str]) -> str:
    # JSON is YAML, and kubectl/client-go read it; no YAML library needed.
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "modeldeploy-dev",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_cert.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": dict(user_entry)}],
        "contexts": [
            {"name": f"{user}@modeldeploy-dev", "context": {"cluster": "modeldeploy-dev", "user": user}}
        ],
        "current-context": f"{user}@modeldeploy-dev",
    }
    return json.dumps(config, indent=2) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Writes a file readable only by us, atomically (a reader never sees half a kubeconfig)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _cert_kubeconfig(server: str, pki: _Pki, client: str) -> str:
    cert, key = pki.clients[client]
    return _kubeconfig_yaml(
        server,
        pki.ca_cert,
        client,
        {
            "client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
            "client-key-data": base64.b64encode(key.read_bytes()).decode(),
        },
    )


# --------------------------------------------------------------------------------------------------
# Processes


def _process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; the fields after it are plain.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel kills the component if the process that started it dies, so a
    # crashed or SIGKILLed test session does not leave a control plane behind.
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


@dataclass
class _Proc:
    name: str
    pid: int
    start_time: int

    def alive(self) -> bool:
        return _process_start_time(self.pid) == self.start_time

    def signal_group(self, sig: int) -> None:
        # Each component leads its own process group (start_new_session), so this reaches any child.
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)


def _read_pids(state_dir: Path) -> list[_Proc]:
    try:
        raw = json.loads((state_dir / _PIDS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [_Proc(p["name"], int(p["pid"]), int(p["start_time"])) for p in raw]


def _write_pids(state_dir: Path, procs: Sequence[_Proc]) -> None:
    text = json.dumps([{"name": p.name, "pid": p.pid, "start_time": p.start_time} for p in procs], indent=2)
    tmp = state_dir / f".{_PIDS_FILE}.tmp"
    tmp.write_text(text + "\n")
    os.replace(tmp, state_dir / _PIDS_FILE)


def _stop_processes(procs: Sequence[_Proc], timeout: float = 15.0) -> None:
    # Reverse start order: clients of the apiserver first, etcd last, so nothing logs a lost backend.
    for proc in reversed(procs):
        proc.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout / len(procs)
        while proc.alive() and time.monotonic() < deadline:
            _reap(proc.pid)
            time.sleep(0.05)
        if proc.alive():
            proc.signal_group(signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while any(p.alive() for p in procs) and time.monotonic() < deadline:
        for p in procs:
            _reap(p.pid)
        time.sleep(0.05)
    left = [f"{p.name} (pid {p.pid})" for p in procs if p.alive()]
    if left:
        raise DevClusterError(f"still running after SIGKILL: {', '.join(left)}")


def _reap(pid: int) -> None:
    # Our own children stay zombies until waited for; other processes' children are not ours to reap.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# --------------------------------------------------------------------------------------------------
# The API, spoken directly: readiness polling must not pay for a kubectl process per try.


def _wait_for(what: str, check: Callable[[], bool], timeout: float, logs: Sequence[Path] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.1)
    tails = "".join(f"\n--- last lines of {log} ---\n{_tail(log)}" for log in logs)
    raise DevClusterError(f"timed out after {timeout:.0f} s waiting for {what}{tails}")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------------------------------
# Audit log


@dataclass(frozen=True)
class AuditEvent:
    verb: str
    user: str
    resource: str
    namespace: str
    name: str
    subresource: str
    code: int
    raw: Mapping[str, Any]


class AuditLog:
    """Reads the apiserver's audit log (JSON lines), which records metadata of every write request."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        """A position to count events from: the log's current size."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def events(self, since: int = 0) -> list[AuditEvent]:
        try:
            with self.path.open("rb") as f:
                f.seek(since)
                data = f.read()
        except FileNotFoundError:
            return []
        events = []
        # A line still being written has no newline yet; it is left for the next read.
        for line in data.split(b"\n")[:-1]:
            if not line.strip():
                continue
            raw = json.loads(line)
            ref = raw.get("objectRef") or {}
            events.append(
                AuditEvent(
                    verb=raw.get("verb", ""),
                    user=(raw.get("user") or {}).get("username", ""),
                    resource=ref.get("resource", ""),
                    namespace=ref.get("namespace", ""),
                    name=ref.get("name", ""),
                    subresource=ref.get("subresource", ""),
                    code=int((raw.get("responseStatus") or {}).get("code", 0)),
                    raw=raw,
                )
            )
        return events

    def writes(self, *, user: str | None = None, since: int = 0) -> list[AuditEvent]:
        """Write requests (create/update/patch/delete), optionally only those made by ``user``."""
        return [e for e in self.events(since) if e.verb in WRITE_VERBS and (user is None or e.user == user)]


# --------------------------------------------------------------------------------------------------
# The cluster


@dataclass(frozen=True)
class _Ports:
    """The loopback ports one cluster binds, chosen free at start."""

    etcd: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int
    metrics_server: int


class DevCluster:
    """The local control plane. ``with DevCluster(state_dir) as cluster: ...`` starts and stops it.

    ``detached=True`` lets the components outlive this Python process (the CLI's ``up``); otherwise
    they are killed by the kernel if this process dies before ``stop``.
    """

    def __init__(
        self,
        state_dir: Path,
        bin_dir: Path | None = None,
        *,
        nodes: Sequence[FakeNode] = DEFAULT_NODES,
        detached: bool = False,
        ready_timeout: float = 90.0,
        metrics_server: bool = False,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.bin_dir = bin_dir if bin_dir is not None else ensure_binaries(build=False)
        self.nodes = tuple(nodes)
        self.detached = detached
        self.metrics_server = metrics_server
        self.ready_timeout = ready_timeout
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.audit_log = AuditLog(self.state_dir / "audit.log")
        self.log_dir = self.state_dir / "logs"
        self.builder_log = self.state_dir / "builder.log"
        self.server = ""
        self._procs: list[_Proc] = []
        self._popens: list[subprocess.Popen[bytes]] = []
        self._api: KubeApi | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> DevCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> DevCluster:
        self._prepare_state_dir()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Ends every component (whole process groups) and waits until none is left."""
        procs = self._procs or _read_pids(self.state_dir)
        try:
            if procs:
                _stop_processes(procs)
        finally:
            for popen in self._popens:
                with contextlib.suppress(Exception):
                    popen.wait(timeout=0)
            self._popens.clear()
            self._procs = []
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / _PIDS_FILE).unlink()

    @classmethod
    def attach(cls, state_dir: Path) -> DevCluster | None:
        """The cluster already running in ``state_dir`` (started by another process), if every
        component is alive and the apiserver answers; None otherwise."""
        state_dir = state_dir.resolve()
        procs = _read_pids(state_dir)
        try:
            info = json.loads((state_dir / _CLUSTER_FILE).read_text())
        except (OSError, ValueError):
            return None
        metrics_server = bool(info.get("metrics_server"))
        expected = [*COMPONENTS, METRICS_SERVER] if metrics_server else COMPONENTS
        if sorted(p.name for p in procs if p.alive()) != sorted(expected):
            return None
        cluster = cls(state_dir, Path(info["bin_dir"]), detached=True, metrics_server=metrics_server)
        cluster._procs = procs
        try:
            status, _ = cluster._admin_api().request("GET", "/readyz", timeout=5)
        except (OSError, ssl.SSLError):
            return None
        return cluster if status == 200 else None

    def running(self) -> list[str]:
        """Names of this cluster's components that are alive."""
        return [p.name for p in (self._procs or _read_pids(self.state_dir)) if p.alive()]

    # -- helpers for users -------------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Runs the pinned kubectl against this cluster, as the admin unless ``kubeconfig`` says otherwise
        (e.g. one from :meth:`service_account_kubeconfig`)."""
        cmd = [str(self.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise DevClusterError(
                f"kubectl {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr.strip()}"
            )
        return proc

    @property
    def helm(self) -> Path:
        return self.bin_dir / "helm"

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path | None = None, *, expiration_seconds: int = 86400
    ) -> Path:
        """A kubeconfig that authenticates as ServiceAccount ``namespace/name`` (TokenRequest token).

        The ServiceAccount must exist; it gets exactly the permissions its (Cluster)RoleBindings give.
        """
        status, body = self._admin_api().request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        if status != 201:
            raise DevClusterError(
                f"TokenRequest for serviceaccount {namespace}/{name} failed ({status}): {body}"
            )
        token = body["status"]["token"]
        path = path or self.state_dir / f"kubeconfig-sa-{namespace}-{name}"
        user = f"system:serviceaccount:{namespace}:{name}"
        _write_private(
            path, _kubeconfig_yaml(self.server, self.state_dir / "pki" / "ca.crt", user, {"token": token})
        )
        return path

    def issue_serving_certificate(
        self, name: str, server_names: Sequence[str], directory: Path
    ) -> tuple[Path, Path, Path]:
        """A serving certificate and key for ``server_names`` (and 127.0.0.1), signed by the cluster CA,
        written into ``directory`` as tls.crt, tls.key and ca.crt (a TLS Secret's file names, which the
        components that mount one expect)."""
        pki = self.state_dir / "pki"
        cert, key = _issue_cert(
            pki, name, f"/CN={server_names[0]}", server_names=server_names, server_ips=("127.0.0.1",)
        )
        directory.mkdir(parents=True, exist_ok=True)
        paths = (directory / "tls.crt", directory / "tls.key", directory / "ca.crt")
        for source, target in zip((cert, key, pki / "ca.crt"), paths, strict=True):
            shutil.copyfile(source, target)
        paths[1].chmod(0o600)
        return paths

    def version(self) -> dict[str, Any]:
        status, body = self._admin_api().request("GET", "/version")
        if status != 200:
            raise DevClusterError(f"GET /version failed ({status}): {body}")
        return dict(body)

    # -- internals ---------------------------------------------------------------------------------

    def _admin_api(self) -> KubeApi:
        if self._api is None:
            info = json.loads((self.state_dir / _CLUSTER_FILE).read_text())
            self.server = info["server"]
            self._api = KubeApi(self.kubeconfig)
        return self._api

    def _prepare_state_dir(self) -> None:
        leftovers = [p for p in _read_pids(self.state_dir) if p.alive()]
        if leftovers:
            # A previous run of this state dir that was never brought down: end it, it cannot be reused
            # (its certificates and ports are about to be replaced).
            _stop_processes(leftovers)
        if self.state_dir.exists() and any(self.state_dir.iterdir()):
            if not (self.state_dir / _STATE_MARKER).exists():
                raise DevClusterError(
                    f"{self.state_dir} is not empty and was not made by the dev cluster; refusing to wipe it"
                )
            shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / _STATE_MARKER).write_text("state of `modeldeploy-dev cluster`; wiped by `up`\n")
        self.log_dir.mkdir()

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        log = (self.log_dir / f"{name}.log").open("wb")
        try:
            popen = subprocess.Popen(
                [str(self.bin_dir / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                start_new_session=True,
                preexec_fn=None if self.detached else _die_with_parent,
            )
        finally:
            log.close()
        start_time = _process_start_time(popen.pid)
        if start_time is None:
            popen.wait()
            raise DevClusterError(f"{name} exited at once:\n{_tail(self.log_dir / f'{name}.log')}")
        self._popens.append(popen)
        self._procs.append(_Proc(name, popen.pid, start_time))
        _write_pids(self.state_dir, self._procs)

    def _alive_or_raise(self, name: str) -> bool:
        """True while component ``name`` runs; a component that died fails the wait at once."""
        proc = next(p for p in self._procs if p.name == name)
        if not proc.alive():
            raise DevClusterError(f"{name} exited:\n{_tail(self.log_dir / f'{name}.log')}")
        return True

    def _start(self) -> None:
        started = time.monotonic()
        if self.metrics_server:
            missing = [f for f in METRICS_SERVER_FILES if not (self.bin_dir / f).is_file()]
            if missing:
                raise DevClusterError(
                    f"{self.bin_dir} lacks {', '.join(missing)}, which metrics_server=True needs; "
                    "run tests/cluster/build.sh"
                )
        ports = _Ports(*free_ports(6))
        pki, component_kubeconfigs = self._start_pki(ports.apiserver)
        etcd_url = self._start_etcd(ports.etcd)
        self._start_apiserver(pki, etcd_url, ports.apiserver)
        self._start_controllers(pki, component_kubeconfigs, ports)
        if self.metrics_server:
            self._install_usage_crd()
        self._start_kwok_nodes(pki, component_kubeconfigs, ports)
        self._wait_until_settled(ports)
        if self.metrics_server:
            self._start_metrics_server(pki, component_kubeconfigs, ports.metrics_server)
        elapsed = time.monotonic() - started
        info = {
            "server": self.server,
            "bin_dir": str(self.bin_dir),
            "metrics_server": self.metrics_server,
            "startup_seconds": round(elapsed, 2),
        }
        (self.state_dir / _CLUSTER_FILE).write_text(json.dumps(info) + "\n")

    def _start_pki(self, apiserver_port: int) -> tuple[_Pki, dict[str, Path]]:
        """Certificates, the admin and component kubeconfigs, the audit policy and KWOK's config."""
        sd = self.state_dir
        pki = _make_pki(sd / "pki")
        self.server = f"https://127.0.0.1:{apiserver_port}"
        (sd / _CLUSTER_FILE).write_text(
            json.dumps({"server": self.server, "bin_dir": str(self.bin_dir)}) + "\n"
        )
        _write_private(self.kubeconfig, _cert_kubeconfig(self.server, pki, "admin"))
        self._api = KubeApi(self.kubeconfig)
        component_kubeconfigs: dict[str, Path] = {}
        clients = ["kube-controller-manager", "kube-scheduler", "kwok"]
        if self.metrics_server:
            clients.append(METRICS_SERVER)
        for client in clients:
            path = sd / f"{client}.kubeconfig"
            _write_private(path, _cert_kubeconfig(self.server, pki, client))
            component_kubeconfigs[client] = path
        (sd / "audit-policy.yaml").write_text(AUDIT_POLICY)
        kwok_config = sd / "kwok.yaml"
        metric = self.bin_dir / KWOK_METRIC_FILE if self.metrics_server else None
        kwok_config.write_text(_kwok_config(self.bin_dir / "kwok-stages.yaml", self.builder_log, metric))
        return pki, component_kubeconfigs

    def _start_etcd(self, etcd_port: int) -> str:
        sd = self.state_dir
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            [
                "--name=dev",
                f"--data-dir={sd / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                # A single member never talks to peers; port 0 keeps it off any fixed port.
                "--listen-peer-urls=http://127.0.0.1:0",
                "--initial-advertise-peer-urls=http://127.0.0.1:0",
                "--initial-cluster=dev=http://127.0.0.1:0",
                # Throwaway data: fsync costs seconds per test run and buys nothing here.
                "--unsafe-no-fsync",
                "--auto-compaction-retention=1",
                "--log-level=warn",
            ],
        )
        _wait_for(
            "etcd /health",
            lambda: self._alive_or_raise("etcd") and http_ok(f"{etcd_url}/health"),
            self.ready_timeout,
            [self.log_dir / "etcd.log"],
        )
        return etcd_url

    def _start_apiserver(self, pki: _Pki, etcd_url: str, apiserver_port: int) -> None:
        sd = self.state_dir
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The `kubernetes` Service's endpoints may not be loopback addresses, and no pod here
                # could reach it anyway (as envtest does).
                "--endpoint-reconciler-type=none",
                f"--secure-port={apiserver_port}",
                f"--cert-dir={sd / 'apiserver'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--audit-policy-file={sd / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log.path}",
                "--audit-log-format=json",
                # Blocking: an event is on disk when the request returns, so a test can count it at once.
                "--audit-log-mode=blocking",
                "--audit-log-maxbackup=0",
                "--profiling=false",
                # pods/log reaches KWOK (the nodes' kubelet) at the node's InternalIP, not its hostname.
                "--kubelet-preferred-address-types=InternalIP",
                # The aggregation layer (what kubeadm sets): requests for an APIService's group are proxied
                # with the front-proxy client certificate and the user in X-Remote-* headers.
                f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.front_proxy_client[0]}",
                f"--proxy-client-key-file={pki.front_proxy_client[1]}",
                # No --enable-aggregator-routing: it would dial an EndpointSlice address, which validation
                # refuses to be a loopback one, and nothing here may be reached at any other address.
                # Without it the aggregator dials the Service, and an ExternalName Service (localhost)
                # is dialled as named (see metrics_server_objects).
            ],
        )
        ca_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        _wait_for(
            "kube-apiserver /readyz",
            lambda: self._alive_or_raise("kube-apiserver") and http_ok(f"{self.server}/readyz", ca_ctx),
            self.ready_timeout,
            [self.log_dir / "kube-apiserver.log"],
        )

    def _start_controllers(self, pki: _Pki, component_kubeconfigs: dict[str, Path], ports: _Ports) -> None:
        """kube-controller-manager and kube-scheduler, started; `_wait_until_settled` waits for them."""
        sd = self.state_dir
        kcm_port, scheduler_port = ports.controller_manager, ports.scheduler
        common = [
            "--bind-address=127.0.0.1",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
            # One instance each: leader election would only delay start-up.
            "--leader-elect=false",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
        ]
        kcm_kubeconfig = component_kubeconfigs["kube-controller-manager"]
        self._spawn(
            "kube-controller-manager",
            [
                *common,
                f"--kubeconfig={kcm_kubeconfig}",
                f"--secure-port={kcm_port}",
                f"--cert-dir={sd / 'kube-controller-manager'}",
                # Every default controller: garbage collector, deployment/replicaset, HPA, job,
                # namespace, serviceaccount(-token), endpoints, node lifecycle, ...
                "--controllers=*",
                # Each controller acts as its own ServiceAccount (as kubeadm sets it up), so the audit
                # log tells the garbage collector from the deployment controller.
                "--use-service-account-credentials=true",
                f"--root-ca-file={pki.ca_cert}",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            ],
        )
        scheduler_kubeconfig = component_kubeconfigs["kube-scheduler"]
        self._spawn(
            "kube-scheduler",
            [
                *common,
                f"--kubeconfig={scheduler_kubeconfig}",
                f"--secure-port={scheduler_port}",
                f"--cert-dir={sd / 'kube-scheduler'}",
            ],
        )

    def _start_kwok_nodes(self, pki: _Pki, component_kubeconfigs: dict[str, Path], ports: _Ports) -> None:
        """KWOK, playing the kubelet of the fake nodes, and the nodes themselves."""
        kwok_config = self.state_dir / "kwok.yaml"
        kwok_port = ports.kwok
        assert self._api is not None
        kwok_cert, kwok_key = pki.clients["kwok"]
        self._spawn(
            "kwok",
            [
                f"--kubeconfig={component_kubeconfigs['kwok']}",
                f"--config={kwok_config}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION[0]}={KWOK_NODE_ANNOTATION[1]}",
                f"--server-address=127.0.0.1:{kwok_port}",
                "--node-ip=127.0.0.1",
                # Pod IPs; KWOK's default (10.0.0.0/24) would overlap the service range.
                f"--cidr={POD_CIDR}",
                # The nodes' kubelet port is KWOK's own server, which serves pods/log (BUILDER_LOG_NAMESPACE).
                f"--node-port={kwok_port}",
                f"--tls-cert-file={kwok_cert}",
                f"--tls-private-key-file={kwok_key}",
                "--node-lease-duration-seconds=40",
                # The usage KWOK reports for pods is set by ClusterResourceUsage objects (set_cpu_usage).
                *(["--enable-crds=ClusterResourceUsage"] if self.metrics_server else []),
            ],
        )

        for node in self.nodes:
            manifest = node.manifest(resource_metrics=self.metrics_server)
            status, body = self._api.request("POST", "/api/v1/nodes", manifest)
            if status != 201:
                raise DevClusterError(f"creating node {node.name} failed ({status}): {body}")

    def _wait_until_settled(self, ports: _Ports) -> None:
        """The controllers healthy, every node Ready, and the default ServiceAccount created."""
        # Skip-verify for the two components' own health endpoints: they serve self-signed certs.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE

        def healthy(component: str, url: str) -> Callable[[], bool]:
            return lambda: self._alive_or_raise(component) and http_ok(url, insecure)

        for component, port, path in (
            ("kube-controller-manager", ports.controller_manager, "/healthz"),
            ("kube-scheduler", ports.scheduler, "/readyz"),
        ):
            _wait_for(
                f"{component} {path}",
                healthy(component, f"https://127.0.0.1:{port}{path}"),
                self.ready_timeout,
                [self.log_dir / f"{component}.log"],
            )
        _wait_for(
            f"nodes {', '.join(n.name for n in self.nodes)} to be Ready (KWOK)",
            lambda: self._alive_or_raise("kwok") and self._nodes_ready(),
            self.ready_timeout,
            [self.log_dir / "kwok.log"],
        )
        _wait_for(
            "the default ServiceAccount (kube-controller-manager)",
            lambda: (
                self._api is not None
                and self._api.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200
            ),
            self.ready_timeout,
            [self.log_dir / "kube-controller-manager.log"],
        )

    def _install_usage_crd(self) -> None:
        """KWOK's ClusterResourceUsage CRD, Established before KWOK starts watching it."""
        assert self._api is not None
        crd = yaml.safe_load((self.bin_dir / KWOK_USAGE_CRD_FILE).read_text())
        path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        status, body = self._api.request("POST", path, crd)
        if status != 201:
            raise DevClusterError(f"creating CRD {crd['metadata']['name']} failed ({status}): {body}")

        def established() -> bool:
            assert self._api is not None
            got = self._api.get(f"{path}/{crd['metadata']['name']}") or {}
            conditions = (got.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        _wait_for(f"CRD {crd['metadata']['name']} Established", established, self.ready_timeout)

    def _start_metrics_server(self, pki: _Pki, component_kubeconfigs: dict[str, Path], port: int) -> None:
        """metrics-server behind the aggregation layer, scraping KWOK's kubelet resource metrics."""
        kubeconfig = component_kubeconfigs[METRICS_SERVER]
        objects = metrics_server_objects(port, pki.ca_cert.read_bytes())
        self.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
        )
        # metrics-server exits at once if it cannot read the request-header CA: wait until its RBAC counts.
        as_metrics_server = KubeApi(kubeconfig)
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": METRICS_NAMESPACE,
                    "verb": "get",
                    "resource": "configmaps",
                    "name": "extension-apiserver-authentication",
                }
            },
        }

        def authorized() -> bool:
            path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
            status, body = as_metrics_server.request("POST", path, review)
            return status == 201 and bool(body["status"].get("allowed"))

        _wait_for("metrics-server's RBAC", authorized, self.ready_timeout)
        cert, key = pki.metrics_server_serving
        self._spawn(
            METRICS_SERVER,
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={cert}",
                f"--tls-private-key-file={key}",
                # KWOK serves the nodes' kubelet port with a certificate for no node name (as kwokctl's
                # metrics-server setup, which passes the same flag).
                "--kubelet-insecure-tls",
                "--kubelet-preferred-address-types=InternalIP",
                "--kubelet-use-node-status-port",
                # The shortest it accepts: a change of usage reaches the HPA within two scrapes. The request
                # timeout must stay under 90% of it (KWOK answers on loopback in milliseconds).
                "--metric-resolution=10s",
                "--kubelet-request-timeout=5s",
            ],
        )

        def available() -> bool:
            api = self._admin_api()
            service = api.get(f"/apis/apiregistration.k8s.io/v1/apiservices/{METRICS_API_SERVICE}") or {}
            conditions = (service.get("status") or {}).get("conditions") or []
            return self._alive_or_raise(METRICS_SERVER) and any(
                c["type"] == "Available" and c["status"] == "True" for c in conditions
            )

        _wait_for(
            f"APIService {METRICS_API_SERVICE} Available (metrics-server behind the aggregation layer)",
            available,
            self.ready_timeout,
            [self.log_dir / f"{METRICS_SERVER}.log", self.log_dir / "kube-apiserver.log"],
        )

    def set_cpu_usage(self, namespace: str, cpu: str, memory: str = "1Gi") -> None:
        """Every container of the pods in ``namespace`` uses ``cpu`` (a quantity: "1500m") from now on,
        as KWOK's kubelet reports it to metrics-server. Needs ``metrics_server=True``."""
        if not self.metrics_server:
            raise DevClusterError("set_cpu_usage needs a cluster started with metrics_server=True")
        usage = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "ClusterResourceUsage",
            "metadata": {"name": f"usage-{namespace}"},
            "spec": {
                "selector": {"matchNamespaces": [namespace]},
                # metrics-server drops a container whose CPU or memory reads zero: both are set.
                "usages": [{"usage": {"cpu": {"value": cpu}, "memory": {"value": memory}}}],
            },
        }
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(usage))

    def _nodes_ready(self) -> bool:
        assert self._api is not None
        status, body = self._api.request("GET", "/api/v1/nodes")
        if status != 200:
            return False
        ready = {
            item["metadata"]["name"]
            for item in body["items"]
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in item.get("status", {}).get("conditions", [])
            )
        }
        return all(node.name in ready for node in self.nodes)


# Failures a real kubelet would report, played by KWOK Stages (its documented way to drive pod status):
# the pods of a ModelDeployment whose name (the pod template's modeldeploy.dev/name label) starts with
# FAULT_PREFIX + a fault below get that status instead of becoming Ready. The end-to-end tests name
# their ModelDeployments so; `modeldeploy dev up` users can do the same to see what the status says.
FAULT_PREFIX: Final = "kwok-fault-"
# Pods in this namespace serve, as their model-builder's log, the CRI-format file DevCluster.builder_log.
BUILDER_LOG_NAMESPACE: Final = "builder-logs"
FAULT_NAME_LABEL: Final = "modeldeploy.dev/name"
# What Triton's log ends with when a model does not load (what FallbackToLogsOnError makes the
# termination message).
FAULT_TRITON_LOG: Final = (
    "2026-01-01T00:00:00Z I 1 server.cc:674] loading: model:1\n"
    "2026-01-01T00:00:01Z E 1 model_lifecycle.cc:654] failed to load 'model' version 1: Internal: "
    "ModuleNotFoundError: No module named 'flash_attn'\n"
    "2026-01-01T00:00:01Z I 1 server.cc:305] Waiting for in-flight requests to complete.\n"
    "error: creating server: Internal - failed to load all models"
)
_FAULT_COMMON: Final = """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: ContainersNotReady
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: ContainersNotReady
  type: ContainersReady
{{ if .spec.initContainers }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
startTime: {{ $now | Quote }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  started: false
"""


def _crash_looping(restarts: int, backoff: str, exit_code: str, reason: str, *extra: str) -> str:
    """The status of a container in CrashLoopBackOff whose last run ended with `exit_code`."""
    last_state = "".join(
        f"      {line}\n" for line in (f"exitCode: {exit_code}", f"reason: {reason}", *extra)
    )
    return (
        _FAULT_COMMON
        + f"""\
  restartCount: {restarts}
  state:
    waiting:
      reason: CrashLoopBackOff
      message: back-off {backoff} restarting failed container
  lastState:
    terminated:
"""
        + last_state
        + """\
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
phase: Running
"""
    )


FAULT_STATUS: Final = {
    "image-pull": _FAULT_COMMON
    + """\
  restartCount: 0
  state:
    waiting:
      reason: ImagePullBackOff
      message: {{ printf "Back-off pulling image %q: not found" .image | Quote }}
{{ end }}
phase: Pending
""",
    "crash": _crash_looping(3, "40s", "1", "Error", f"message: {json.dumps(FAULT_TRITON_LOG)}"),
    "oom": _crash_looping(2, "20s", "137", "OOMKilled"),
    # The builder init container keeps running (a build in progress); nothing else starts.
    "building": _FAULT_COMMON.replace(
        "    terminated:\n      exitCode: 0\n      reason: Completed\n", "    running:\n"
    )
    .replace("  ready: true\n", "  ready: false\n")
    .replace("      finishedAt: {{ $now | Quote }}\n", "")
    + """\
  restartCount: 0
  state:
    waiting:
      reason: PodInitializing
{{ end }}
phase: Pending
""",
}


def _fault_selector(prefix: str) -> str:
    return f'(.metadata.labels["{FAULT_NAME_LABEL}"] // "") | startswith("{prefix}")'


def fault_stages() -> list[dict[str, Any]]:
    """One KWOK Stage per fault: applied once, to a scheduled pod that has no status yet."""
    return [
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Stage",
            "metadata": {"name": f"modeldeploy-fault-{fault}"},
            "spec": {
                "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                "selector": {
                    "matchExpressions": [
                        {
                            "key": _fault_selector(f"{FAULT_PREFIX}{fault}-"),
                            "operator": "In",
                            "values": ["true"],
                        },
                        {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                        {"key": ".status.podIP", "operator": "DoesNotExist"},
                    ]
                },
                "next": {"statusTemplate": template},
            },
        }
        for fault, template in FAULT_STATUS.items()
    ]


def metrics_server_objects(port: int, ca_bundle: bytes) -> list[dict[str, Any]]:
    """What metrics-server's release manifests create around it, less its Deployment (it runs here as a
    process on ``port``): its RBAC, its Service and the APIService that puts it behind the aggregation layer.

    The Service is an ExternalName one for localhost: the aggregator dials it as named (it would dial a
    ClusterIP Service's cluster IP, which nothing here serves). The APIService trusts the cluster CA,
    which signed metrics-server's serving certificate for the Service's DNS name.
    """
    rbac_group = "rbac.authorization.k8s.io"
    user = {"apiGroup": rbac_group, "kind": "User", "name": _CLIENT_IDENTITIES[METRICS_SERVER][0]}
    return [
        {
            "apiVersion": f"{rbac_group}/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:metrics-server"},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]},
            ],
        },
        {
            "apiVersion": f"{rbac_group}/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:metrics-server"},
            "roleRef": {"apiGroup": rbac_group, "kind": "ClusterRole", "name": "system:metrics-server"},
            "subjects": [user],
        },
        {
            # Delegated authentication and authorization: TokenReviews and SubjectAccessReviews.
            "apiVersion": f"{rbac_group}/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "metrics-server:system:auth-delegator"},
            "roleRef": {"apiGroup": rbac_group, "kind": "ClusterRole", "name": "system:auth-delegator"},
            "subjects": [user],
        },
        {
            # The request-header CA and allowed names, which the apiserver publishes in kube-system.
            "apiVersion": f"{rbac_group}/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "metrics-server-auth-reader", "namespace": METRICS_NAMESPACE},
            "roleRef": {
                "apiGroup": rbac_group,
                "kind": "Role",
                "name": "extension-apiserver-authentication-reader",
            },
            "subjects": [user],
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": METRICS_SERVER, "namespace": METRICS_NAMESPACE},
            "spec": {
                "type": "ExternalName",
                "externalName": "localhost",
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": METRICS_API_SERVICE},
            "spec": {
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "service": {"name": METRICS_SERVER, "namespace": METRICS_NAMESPACE, "port": port},
                "caBundle": base64.b64encode(ca_bundle).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


def _kwok_config(stages_file: Path, builder_log: Path, metric_file: Path | None = None) -> str:
    # The node and pod stages kwokctl gives this KWOK release (copied by build.sh from its module), the
    # pod stages kept off the fault pods, plus the fault stages.
    # Options go on the command line instead: a KwokConfiguration in this file would replace KWOK's
    # defaults wholesale (its parallelism settings would be 0) rather than be merged with them.
    stages = [doc for doc in yaml.safe_load_all(stages_file.read_text()) if doc]
    for stage in stages:
        spec = stage.get("spec") or {}
        if (spec.get("resourceRef") or {}).get("kind") == "Pod" and stage["metadata"]["name"] != "pod-delete":
            expressions = spec.setdefault("selector", {}).setdefault("matchExpressions", [])
            expressions.append(
                {"key": _fault_selector(FAULT_PREFIX), "operator": "NotIn", "values": ["true"]}
            )
    # The model-builder containers of BUILDER_LOG_NAMESPACE log what a test writes to `builder_log`.
    logs = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "ClusterLogs",
        "metadata": {"name": "modeldeploy-builder-logs"},
        "spec": {
            "selector": {"matchNamespaces": [BUILDER_LOG_NAMESPACE]},
            "logs": [{"containers": ["model-builder"], "logsFile": str(builder_log), "follow": False}],
        },
    }
    # KWOK's Metric for the kubelet's /metrics/resource, served per node under the path the nodes'
    # RESOURCE_METRICS_PATH_ANNOTATION names.
    metrics = [doc for doc in yaml.safe_load_all(metric_file.read_text()) if doc] if metric_file else []
    return yaml.safe_dump_all([*stages, *fault_stages(), logs, *metrics], sort_keys=False)


# --------------------------------------------------------------------------------------------------
# Functions for the CLI


def cluster_up(
    state_dir: Path | None = None,
    *,
    build: bool = True,
    restart: bool = False,
    ready_timeout: float = 90.0,
    metrics_server: bool = False,
) -> DevCluster:
    """Starts a detached control plane in ``state_dir`` and waits until it is ready.

    One that is already running there is kept (its objects too) unless ``restart``, which replaces it
    with a fresh, empty one; so is one without metrics-server when ``metrics_server`` asks for it.
    """
    state_dir = (state_dir or default_state_dir()).resolve()
    running = DevCluster.attach(state_dir) if not restart else None
    if running is not None and (running.metrics_server or not metrics_server):
        return running
    bin_dir = ensure_binaries(build=build)
    return DevCluster(
        state_dir, bin_dir, detached=True, ready_timeout=ready_timeout, metrics_server=metrics_server
    ).start()


def cluster_down(state_dir: Path | None = None) -> list[str]:
    """Stops the control plane of ``state_dir``; returns the names of the components that were running."""
    state_dir = (state_dir or default_state_dir()).resolve()
    procs = _read_pids(state_dir)
    was_running = [p.name for p in procs if p.alive()]
    if procs:
        _stop_processes(procs)
    with contextlib.suppress(FileNotFoundError):
        (state_dir / _PIDS_FILE).unlink()
    return was_running


def cluster_kubeconfig(state_dir: Path | None = None) -> Path:
    """The admin kubeconfig of the control plane of ``state_dir``; fails if it is not running."""
    state_dir = (state_dir or default_state_dir()).resolve()
    kubeconfig = state_dir / "kubeconfig"
    procs = _read_pids(state_dir)
    if not kubeconfig.is_file() or not procs or not all(p.alive() for p in procs):
        raise DevClusterError(
            f"no dev cluster is running in {state_dir}; start one with `modeldeploy-dev cluster up`"
        )
    return kubeconfig


devcluster_app = typer.Typer(
    help="A local Kubernetes control plane with fake GPU nodes (etcd, apiserver, KWOK)."
)

_STATE_DIR_OPTION = typer.Option(
    None, "--state-dir", help="Where the cluster keeps its data [default: $MODELDEPLOY_CACHE/dev-cluster]"
)


@devcluster_app.command("up")
def up_command(
    state_dir: Path | None = _STATE_DIR_OPTION,
    build: bool = typer.Option(True, help="Build the binaries first (tests/cluster/build.sh) if missing"),
    timeout: float = typer.Option(90.0, help="Seconds to wait for the cluster to become ready"),
    restart: bool = typer.Option(False, help="Replace a running cluster with a fresh, empty one"),
    metrics_server: bool = typer.Option(
        False,
        "--metrics-server",
        help="Also run metrics-server behind the aggregation layer (`kubectl top`, HPAs on cpu)",
    ),
) -> None:
    """Start the control plane in the background and wait until it is ready (prints the kubeconfig path)."""
    resolved = (state_dir or default_state_dir()).resolve()
    attached = DevCluster.attach(resolved) if not restart else None
    already_running = attached is not None and (attached.metrics_server or not metrics_server)
    try:
        cluster = cluster_up(
            resolved, build=build, restart=restart, ready_timeout=timeout, metrics_server=metrics_server
        )
    except DevClusterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    if already_running:
        typer.echo(f"dev cluster already running at {cluster.server} (--restart for a fresh one)", err=True)
    else:
        info = json.loads((cluster.state_dir / _CLUSTER_FILE).read_text())
        typer.echo(f"dev cluster ready in {info['startup_seconds']} s at {cluster.server}", err=True)
    typer.echo(f"export KUBECONFIG={cluster.kubeconfig}", err=True)
    typer.echo(str(cluster.kubeconfig))


@devcluster_app.command("down")
def down_command(state_dir: Path | None = _STATE_DIR_OPTION) -> None:
    """Stop every process of the control plane."""
    try:
        stopped = cluster_down(state_dir)
    except DevClusterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "no dev cluster was running", err=True)


@devcluster_app.command("kubeconfig")
def kubeconfig_command(state_dir: Path | None = _STATE_DIR_OPTION) -> None:
    """Print the path of the admin kubeconfig of the running control plane."""
    try:
        typer.echo(str(cluster_kubeconfig(state_dir)))
    except DevClusterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err


if __name__ == "__main__":  # pragma: no cover - convenience for `python -m modeldeploy_dev.devcluster`
    sys.exit(devcluster_app())
