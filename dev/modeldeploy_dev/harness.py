"""Machinery for running the real operator against the local control plane (end-to-end tests and
``bench/controlplane``, which imports this module so that the benchmark measures exactly the set-up the
tests verify).

No pytest here: everything is plain functions and classes over a
:class:`modeldeploy_dev.devcluster.DevCluster`.

- :func:`install_crds` applies ``crds/`` and waits until the CRD is Established.
- :func:`install_chart_rbac` renders the Helm chart with ``helm template`` and applies only its
  ServiceAccount and (Cluster)Roles/Bindings, so the operator runs with exactly the chart's RBAC.
- :class:`OperatorProcess` runs ``modeldeploy operator`` as a subprocess with that ServiceAccount's
  kubeconfig and reports every 403 it logged or got from the apiserver.
- :class:`KubeApi` speaks the API directly (admin), for polling and watching without a kubectl process
  per look.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import yaml

from model_repo.triton import free_ports, http_ok, stop_process_group
from modeldeploy_dev.devcluster import DevCluster, DevClusterError
from modeldeploy_dev.kubeapi import KubeApi, KubeApiError

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT / "crds"
CHART_DIR = REPO_ROOT / "charts" / "modeldeploy"
EXAMPLES_DIR = REPO_ROOT / "examples"
MODELDEPLOY_BIN = Path(sys.executable).parent / "modeldeploy"

CRD_NAME = "modeldeployments.modeldeploy.dev"
API_VERSION = "modeldeploy.dev/v1alpha1"
FIELD_MANAGER = "modeldeploy"
NAME_LABEL = "modeldeploy.dev/name"
MANAGED_BY_SELECTOR = "app.kubernetes.io/managed-by=modeldeploy"

# The chart objects that make up the operator's identity and permissions; everything else it renders
# (the operator's own Deployment, Services, ...) needs a container image and is not used here.
RBAC_KINDS = frozenset({"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"})


# An RBAC denial, as the apiserver words it: '<resource> "x" is forbidden: User "<user>" cannot <verb>
# resource ...'. Other 403s are not RBAC's (e.g. "unable to create new content in namespace x because it
# is being terminated", which a test's namespace clean-up can cause) and are not matched.
RBAC_DENIAL = re.compile(r"is forbidden: User \S+ cannot|cannot \w+ resource")

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Small utilities


# Errors wait_until takes for "not yet": the cluster may answer a moment later (an object not created yet,
# a watch cache lagging).
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (DevClusterError, KubeApiError, OSError, KeyError, ValueError)


def wait_until(
    what: str,
    predicate: Callable[[], T | None],
    timeout: float = 60.0,
    interval: float = 0.2,
    tolerate: tuple[type[Exception], ...] = TRANSIENT_ERRORS,
) -> T:
    """Polls ``predicate`` until it returns something truthy, and returns that. An error of a type in
    ``tolerate`` counts as a falsy answer; ``tolerate=()`` fails the wait on the predicate's first error."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
        except tolerate as err:
            value, last_error = None, err
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def condition(obj: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def is_ready(md: Mapping[str, Any]) -> bool:
    """Ready=True for the ModelDeployment's current generation."""
    ready = condition(md, "Ready")
    status = md.get("status") or {}
    generation = md["metadata"].get("generation")
    return (
        ready is not None and ready.get("status") == "True" and status.get("observedGeneration") == generation
    )


def model_deployment(
    name: str, spec: Mapping[str, Any], labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    return {"apiVersion": API_VERSION, "kind": "ModelDeployment", "metadata": metadata, "spec": dict(spec)}


def load_gitops_health() -> ModuleType:
    """tests/chart/gitops_health.py (Argo CD's Lua and Flux's CEL health checks, run on an object).

    tests/chart is not on sys.path when only tests/e2e runs; the module is loaded by its path."""
    path = REPO_ROOT / "tests" / "chart" / "gitops_health.py"
    spec = importlib.util.spec_from_file_location("gitops_health", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def events_of(api: KubeApi, namespace: str, uid: str) -> list[dict[str, Any]]:
    """The Events about one object (by uid), oldest first."""
    found = [e for e in api.items("events", namespace) if (e.get("involvedObject") or {}).get("uid") == uid]
    return sorted(found, key=lambda e: str(e.get("firstTimestamp") or e.get("eventTime") or ""))


def load_manifests(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@dataclass(frozen=True)
class Example:
    """One ModelDeployment of a file under ``examples/``."""

    path: Path
    manifest: dict[str, Any]
    # Whether the file names a namespace (GitOps layouts do); then it cannot be applied as-is elsewhere.
    namespaced: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(EXAMPLES_DIR).with_suffix('')}:{self.manifest['metadata']['name']}"


def example_model_deployments() -> list[Example]:
    """Every ModelDeployment under ``examples/``, with its namespace removed from ``manifest``."""
    found = []
    for path in sorted(EXAMPLES_DIR.rglob("*.yaml")):
        for doc in load_manifests(path):
            if doc.get("kind") == "ModelDeployment":
                namespaced = doc["metadata"].pop("namespace", None) is not None
                found.append(Example(path, doc, namespaced))
    return found


def reserve_volume(cluster: DevCluster, namespace: str, claim: str, size: str = "100Gi") -> str:
    """A PersistentVolume that only claim ``namespace/claim`` can bind (claimRef); returns its name.

    The dev cluster has no dynamic provisioner; the controller-manager's binder binds this volume to the
    claim as it would a pre-provisioned one. KWOK never mounts it, so the hostPath is never touched.
    """
    name = unique_name("pv")
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteMany", "ReadOnlyMany", "ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": f"/tmp/{name}"},
            "claimRef": {"namespace": namespace, "name": claim},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(volume))
    return name


# --------------------------------------------------------------------------------------------------
# Direct API access


# --------------------------------------------------------------------------------------------------
# CRD and chart RBAC


def install_crds(cluster: DevCluster, timeout: float = 60.0) -> None:
    """Applies ``crds/`` (server-side, so re-applying is idempotent) and waits for Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        f"crd/{CRD_NAME}",
        f"--timeout={int(timeout)}s",
        timeout=timeout + 10,
    )


@dataclass
class ChartRbac:
    """The operator's ServiceAccount and roles as the Helm chart renders them, applied to the cluster."""

    release: str
    namespace: str
    service_account: str
    objects: list[dict[str, Any]]
    kubeconfig: Path

    @property
    def user(self) -> str:
        """The username the apiserver (and its audit log) gives the operator."""
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def rules(self) -> list[dict[str, Any]]:
        return [
            rule for obj in self.objects if obj["kind"] in {"ClusterRole", "Role"} for rule in obj["rules"]
        ]

    def uninstall(self, cluster: DevCluster) -> None:
        for obj in self.objects:
            if obj["kind"] in {"ClusterRole", "ClusterRoleBinding"}:
                cluster.kubectl(
                    "delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found", check=False
                )
        cluster.kubectl(
            "delete", "namespace", self.namespace, "--wait=false", "--ignore-not-found", check=False
        )


def render_chart_rbac(
    cluster: DevCluster, release: str, namespace: str, watch_namespaces: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The ServiceAccount and RBAC objects of ``helm template`` for these values."""
    args = [str(cluster.helm), "template", release, str(CHART_DIR), "--namespace", namespace]
    if watch_namespaces:
        args += ["--set-json", f"watchNamespaces={json.dumps(list(watch_namespaces))}"]
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    if proc.returncode != 0:
        raise DevClusterError(f"helm template failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    objects = [doc for doc in yaml.safe_load_all(proc.stdout) if doc and doc.get("kind") in RBAC_KINDS]
    kinds = {obj["kind"] for obj in objects}
    if "ServiceAccount" not in kinds or not kinds & {"ClusterRole", "Role"}:
        raise DevClusterError(f"helm template rendered no ServiceAccount and role (kinds: {sorted(kinds)})")
    return objects


def install_chart_rbac(
    cluster: DevCluster, release: str, namespace: str, watch_namespaces: Sequence[str] = ()
) -> ChartRbac:
    """Creates ``namespace`` and applies exactly the chart's RBAC for this release in it."""
    objects = render_chart_rbac(cluster, release, namespace, watch_namespaces)
    cluster.kubectl("create", "namespace", namespace)
    for ns in watch_namespaces:
        # A Role can only be created in a namespace that exists.
        cluster.kubectl("create", "namespace", ns, check=False)
    listing = {"apiVersion": "v1", "kind": "List", "items": objects}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(listing))
    account = next(obj for obj in objects if obj["kind"] == "ServiceAccount")["metadata"]["name"]
    kubeconfig = cluster.service_account_kubeconfig(namespace, account)
    return ChartRbac(release, namespace, account, objects, kubeconfig)


def create_namespace(cluster: DevCluster, name: str) -> str:
    """Creates ``name`` and waits for its default ServiceAccount, without which pods are refused."""
    cluster.kubectl("create", "namespace", name)
    wait_until(
        f"serviceaccount default in {name}",
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
    )
    return name


def apply_objects(cluster: DevCluster, namespace: str, directory: Path, *objects: Mapping[str, Any]) -> None:
    """``kubectl apply -f`` of a file in ``directory`` listing ``objects``, as a user would do it."""
    path = directory / f"{unique_name(objects[0]['metadata']['name'])}.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))
    cluster.kubectl("apply", "-n", namespace, "-f", str(path))


@contextlib.contextmanager
def models_namespace(cluster: DevCluster, prefix: str) -> Iterator[str]:
    """A fresh namespace (see :func:`create_namespace`) for a test's ModelDeployments, removed after."""
    name = create_namespace(cluster, unique_name(prefix))
    yield name
    # ModelDeployments first, while the namespace is still live: the operator then sees plain deletions
    # instead of trying to restore children in a namespace that refuses new content.
    cluster.kubectl(
        "delete", "modeldeployments", "--all", "-n", name, "--wait=true", "--timeout=60s", check=False
    )
    cluster.kubectl("delete", "namespace", name, "--wait=false")


@contextlib.contextmanager
def chart_rbac_installed(cluster: DevCluster, release: str) -> Iterator[ChartRbac]:
    """``crds/`` and the chart's RBAC for ``release`` in a fresh namespace of its own, removed after."""
    install_crds(cluster)
    chart_rbac = install_chart_rbac(cluster, release=release, namespace=unique_name("modeldeploy-system"))
    yield chart_rbac
    chart_rbac.uninstall(cluster)


# --------------------------------------------------------------------------------------------------
# The operator process


@dataclass
class ProcessUsage:
    peak_rss_bytes: int
    cpu_seconds: float


def process_usage(pid: int) -> ProcessUsage:
    """Peak resident memory (VmHWM) and user+system CPU time of a live process, from /proc."""
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    # utime, stime, cutime, cstime (fields 14-17): children's time counts too, should kopf fork.
    cpu = sum(int(value) for value in fields[11:15]) / ticks
    return ProcessUsage(peak_rss_bytes=peak, cpu_seconds=cpu)


@dataclass
class OperatorProcess:
    """``modeldeploy operator`` as a subprocess that authenticates with ``kubeconfig``.

    ``scope`` is ``["--all-namespaces"]`` or ``["--namespace", NS, ...]``.
    """

    kubeconfig: Path
    log_path: Path
    scope: Sequence[str] = ("--all-namespaces",)
    resync_seconds: int | None = None
    extra_args: Sequence[str] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)
    health_port: int = 0
    metrics_port: int = 0
    _popen: subprocess.Popen[bytes] | None = None
    _log_offset_at_start: int = 0

    def command(self) -> list[str]:
        args = [
            str(MODELDEPLOY_BIN),
            "operator",
            *self.scope,
            "--standalone",
            "--health-port",
            str(self.health_port),
            "--metrics-port",
            str(self.metrics_port),
        ]
        if self.resync_seconds is not None:
            args += ["--resync-seconds", str(self.resync_seconds)]
        return [*args, *self.extra_args]

    def start(self, ready_timeout: float = 60.0) -> OperatorProcess:
        if self.running:
            raise RuntimeError("the operator is already running")
        # Picked together: two separate picks can return the same port (each frees it at once).
        spare = iter(port for port in free_ports(3) if port not in (self.health_port, self.metrics_port))
        self.health_port = self.health_port or next(spare)
        self.metrics_port = self.metrics_port or next(spare)
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        # The operator reads its flags from MODELDEPLOY_* too; the developer's shell must not change them.
        for key in [k for k in env if k.startswith("MODELDEPLOY_") and k not in self.extra_env]:
            del env[key]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset_at_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {' '.join(self.command())}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        try:
            wait_until(
                f"the operator's /healthz on port {self.health_port}", self._healthy_or_dead, ready_timeout
            )
        except AssertionError as err:
            self.stop()
            raise AssertionError(f"{err}\n--- operator log ---\n{self.log_tail()}") from None
        if not self.running:
            raise AssertionError(f"the operator exited at start-up:\n{self.log_tail()}")
        return self

    def _healthy_or_dead(self) -> bool:
        if not self.running:
            return True  # start() reports the exit
        return self.healthy()

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError("the operator was never started")
        return self._popen.pid

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def healthy(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.health_port}/healthz")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def usage(self) -> ProcessUsage:
        return process_usage(self.pid)

    def kill(self) -> None:
        """SIGKILL: no clean-up, no last writes; what a crashed or OOM-killed pod does."""
        if self._popen is not None and self.running:
            os.killpg(self._popen.pid, signal.SIGKILL)
            self._popen.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self._popen is None:
            return None
        stop_process_group(self._popen, timeout)
        return self._popen.returncode

    def log_text(self, since_start: bool = False) -> str:
        try:
            with self.log_path.open("rb") as f:
                if since_start:
                    f.seek(self._log_offset_at_start)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def forbidden_log_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if RBAC_DENIAL.search(line)]

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def forbidden_requests(cluster: DevCluster, user: str, since: int = 0) -> list[str]:
    """Write requests by ``user`` that RBAC refused, from the audit log."""
    refused = []
    for e in cluster.audit_log.writes(user=user, since=since):
        message = str((e.raw.get("responseStatus") or {}).get("message", ""))
        # A 403 without a message is counted too: better a false alarm than a missed denial.
        if e.code == 403 and (not message or RBAC_DENIAL.search(message)):
            target = f"{e.resource}{'/' + e.subresource if e.subresource else ''} {e.namespace}/{e.name}"
            refused.append(f"{e.verb} {target}: {message}")
    return refused


_DENIED = re.compile(r'cannot (\w+) resource \\?"([^"\\]+)\\?"(?: in API group \\?"([^"\\]*)\\?")?')


def summarize_denials(lines: Iterable[str]) -> list[str]:
    """One line per distinct denial (verb, resource, group), with how often it was seen."""
    counts: dict[str, int] = {}
    for line in lines:
        match = _DENIED.search(line)
        key = (
            f"{match.group(1)} {match.group(2)} (group {match.group(3) or 'core'!r})" if match else line[:300]
        )
        counts[key] = counts.get(key, 0) + 1
    return [f"{key} x{count}" for key, count in counts.items()]


def assert_no_forbidden(cluster: DevCluster, operator: OperatorProcess, user: str, since: int = 0) -> None:
    """Fails if the operator met a 403: the chart's role lacks a verb the operator needs."""
    logged = operator.forbidden_log_lines()
    refused = forbidden_requests(cluster, user, since)
    assert not logged and not refused, (
        "the operator was refused by RBAC, so the chart's role lacks a verb it needs: "
        + "; ".join(summarize_denials([*refused, *logged]))
        + f"\nfirst log line: {logged[0] if logged else refused[0]}"
    )


# --------------------------------------------------------------------------------------------------
# Children


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def applied_by_us(obj: Mapping[str, Any]) -> bool:
    """True if the object's managedFields show our field manager with operation Apply."""
    entries = (obj.get("metadata") or {}).get("managedFields") or []
    return any(e.get("manager") == FIELD_MANAGER and e.get("operation") == "Apply" for e in entries)


def managed_children(
    api: KubeApi, namespace: str, resources: Iterable[str] = ("deployments", "services")
) -> dict[str, list[dict[str, Any]]]:
    """Every object in ``namespace`` that carries our managed-by label, by resource."""
    return {resource: api.items(resource, namespace, MANAGED_BY_SELECTOR) for resource in resources}


def pods_of(api: KubeApi, namespace: str, md_name: str) -> list[dict[str, Any]]:
    return [
        pod
        for pod in api.items("pods", namespace, f"{NAME_LABEL}={md_name}")
        if not pod["metadata"].get("deletionTimestamp")
    ]


def running_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )


@contextlib.contextmanager
def watching(api: KubeApi, path: str, resource_version: str) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Records every watch event of ``path`` from ``resource_version`` while the block runs."""
    events: list[tuple[str, dict[str, Any]]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            api.watch(
                path, lambda kind, obj: events.append((kind, obj)), stop, resource_version=resource_version
            )
        except BaseException as err:  # reported to the test below
            if not stop.is_set():
                errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield events
    finally:
        stop.set()
    if errors:
        raise AssertionError(f"the watch of {path} failed: {errors[0]!r}")
