"""Control-plane benchmark: how fast the operator turns N ModelDeployments into children and status,
how many writes it needs, what it costs, and how that compares with the floor.

For each N (50, 200, 500 by default), against a fresh namespace of the real local control plane
(``modeldeploy_dev.devcluster``: etcd, kube-apiserver, controller-manager, scheduler, KWOK nodes), with the
operator as a separate process (``--all-namespaces``, a fresh process per N) running as a ServiceAccount
bound to the Helm chart's default RBAC:

1. **Operator.** ``kubectl apply --server-side`` of N ModelDeployments in one file. Timed from the start
   of the apply: every child exists; every status is written for the current generation; every
   ModelDeployment is Ready (this one includes the controller-manager, scheduler and KWOK making the
   pods); and the operator's last write of the convergence (its audit-log timestamp), which is the
   convergence time. Writes come from the apiserver's audit log, by the operator's username. Peak RSS
   (VmHWM) and CPU seconds come from /proc.
2. **Floor.** One plain client replays, sequentially over one keep-alive connection, the same writes in
   the same order into another namespace: the N ModelDeployments (server-side apply), then each of the
   operator's writes with an equivalent body (its children, server-side applied as the operator left
   them; its status and annotation patches; its Events). The target compares the operator's
   convergence time with this.
3. **Steady state.** With everything converged, one full resync period (plus margin) passes; every
   write the operator makes in it is counted (target 0).

Targets: N=500 converges within 2x the floor; operator peak RSS <= 200 MB at N=500.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common.machine import describe_machine, machine_line
from bench.common.report import (
    benchmark_parser,
    markdown_table,
    save_figure,
    write_json,
    write_text,
)

# The e2e tests' harness (chart RBAC, operator process, API client): the benchmark measures exactly the
# set-up the tests verify.
from modeldeploy_dev import harness, kubeapi
from modeldeploy_dev.devcluster import DEFAULT_NODES, AuditEvent, DevCluster, FakeNode, ensure_binaries

SIZES = (50, 200, 500)
QUICK_SIZES = (10, 50)
RESYNC_SECONDS = 30
QUICK_RESYNC_SECONDS = 10
TARGET_FLOOR_RATIO = 2.0
TARGET_RSS_MB = 200.0
TARGET_SIZE = 500
SOURCE = "hf://google-bert/bert-base-uncased"
REVISION = "86b5e0934494bd15c9632b12f734a8a67f723594"
# "Went quiet": this long without a write. At N=500 on 2 cores kopf's watch queues lag by seconds, so a
# shorter pause can end while events that still cause writes are queued.
QUIET_SECONDS = 10.0
README = Path(__file__).resolve().parent / "README.md"
SECTION_BEGIN = "<!-- controlplane-results:begin -->"
SECTION_END = "<!-- controlplane-results:end -->"
# Children of the benchmark's spec (one fixed replica on the CPU, no autoscaler, no cache).
CHILD_RESOURCES = ("deployments", "services")
# Items of a list response carry neither apiVersion nor kind.
CHILD_TYPES = {"deployments": ("apps/v1", "Deployment"), "services": ("v1", "Service")}
# Only Ready pods count, and a KWOK node holds 110: enough CPU nodes for the largest N.
PODS_PER_NODE = 110


@dataclass
class SizeResult:
    n: int
    apply_s: float
    children_s: float | None
    status_s: float | None
    ready_s: float | None
    converged_s: float | None
    operator_writes: int
    writes_per_md: float
    write_mix: dict[str, int]
    # Writes made after every ModelDeployment was already Ready (catching up on queued events).
    writes_after_all_ready: dict[str, int]
    floor_s: float
    floor_writes: int
    floor_not_replayed: dict[str, int]
    floor_ratio: float | None
    steady_window_s: float
    steady_writes: int
    steady_write_mix: dict[str, int]
    steady_reconciles: float | None
    peak_rss_mb: float
    cpu_s_at_convergence: float
    cpu_s_total: float
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Workload


def spec() -> dict[str, Any]:
    return {
        "model": {"source": SOURCE, "revision": REVISION, "task": "text-classification"},
        "replicas": 1,
    }


def model_names(n: int) -> list[str]:
    return [f"model-{i:04d}" for i in range(n)]


def write_manifests(path: Path, names: Iterable[str]) -> None:
    items = [harness.model_deployment(name, spec()) for name in names]
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def mix(events: Iterable[AuditEvent]) -> dict[str, int]:
    counts = Counter(
        f"{e.verb} {e.resource}{'/' + e.subresource if e.subresource else ''}" for e in events if e.code < 400
    )
    return dict(counts.most_common())


def audit_time(event: AuditEvent) -> float:
    """The event's completion as a Unix timestamp (RFC 3339 with microseconds in the audit log)."""
    stamp = str(event.raw.get("stageTimestamp") or event.raw["requestReceivedTimestamp"])
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------------------------------
# Observing convergence


@dataclass
class Progress:
    children: int = 0
    status: int = 0
    ready: int = 0


def progress(api: kubeapi.KubeApi, namespace: str) -> Progress:
    mds = api.model_deployments(namespace)
    children = {
        resource: {
            obj["metadata"]["name"] for obj in api.items(resource, namespace, harness.MANAGED_BY_SELECTOR)
        }
        for resource in CHILD_RESOURCES
    }
    result = Progress()
    for md in mds:
        name = md["metadata"]["name"]
        if all(name in children[resource] for resource in CHILD_RESOURCES):
            result.children += 1
        if (md.get("status") or {}).get("observedGeneration") == md["metadata"]["generation"]:
            result.status += 1
            if harness.is_ready(md):
                result.ready += 1
    return result


class RssSampler(threading.Thread):
    """Samples the operator's resident memory twice a second, for the plot."""

    def __init__(self, pid: int, started: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.started = started
        self.samples: list[tuple[float, float]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss_mb = int(line.split()[1]) / 1024
                        self.samples.append((round(time.monotonic() - self.started, 2), round(rss_mb, 1)))
            except OSError:
                return


def wait_quiet(cluster: DevCluster, user: str, timeout: float) -> None:
    """Until ``QUIET_SECONDS`` pass without a write by ``user``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mark = cluster.audit_log.mark()
        time.sleep(QUIET_SECONDS)
        if not cluster.audit_log.writes(user=user, since=mark):
            return
    raise TimeoutError(f"the operator kept writing for {timeout:.0f} s after convergence")


# --------------------------------------------------------------------------------------------------
# The floor: the same writes from one plain client


class PlainClient:
    """One keep-alive HTTPS connection to the apiserver as the admin; requests strictly one at a time."""

    def __init__(self, kubeconfig: Path) -> None:
        self._api = kubeapi.KubeApi(kubeconfig)  # for its TLS context and server URL
        url = urllib.parse.urlparse(self._api.server)
        self._conn = http.client.HTTPSConnection(
            url.hostname or "127.0.0.1", url.port, context=self._api.ssl_context
        )

    def send(self, method: str, path: str, body: Any, content_type: str) -> int:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else {}
        self._conn.request(method, path, body=data, headers=headers)
        response = self._conn.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self._conn.close()


def _clean(resource: str, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    """An object as the operator applied it, minus what the server owns, moved to ``namespace``."""
    meta = obj["metadata"]
    clean_meta = {
        "name": meta["name"],
        "namespace": namespace,
        "labels": meta.get("labels") or {},
        "annotations": {
            k: v
            for k, v in (meta.get("annotations") or {}).items()
            if not k.startswith("deployment.kubernetes.io/")
        },
    }
    api_version, kind = CHILD_TYPES[resource]
    body: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "metadata": clean_meta}
    body.update({k: v for k, v in obj.items() if k not in {"apiVersion", "kind", "metadata", "status"}})
    if kind == "Service":
        # Allocated by the apiserver for the original; a copy must get its own.
        body["spec"] = {k: v for k, v in body["spec"].items() if k not in {"clusterIP", "clusterIPs"}}
    return body


def run_floor(
    cluster: DevCluster,
    api: kubeapi.KubeApi,
    source_namespace: str,
    floor_namespace: str,
    names: Sequence[str],
    operator_writes: Sequence[AuditEvent],
) -> tuple[float, int, dict[str, int]]:
    """Replays the ModelDeployments' creation and the operator's writes.

    Returns the seconds the writes took, how many there were, and the operator's writes that have no
    equivalent here (by verb and resource).
    """
    harness.create_namespace(cluster, floor_namespace)
    bodies: dict[tuple[str, str], dict[str, Any]] = {}
    for resource in CHILD_RESOURCES:
        for obj in api.items(resource, source_namespace, harness.MANAGED_BY_SELECTOR):
            bodies[(resource, obj["metadata"]["name"])] = _clean(resource, obj, floor_namespace)
    statuses = {
        md["metadata"]["name"]: md.get("status") or {} for md in api.model_deployments(source_namespace)
    }
    md_base = f"{kubeapi.MD_PATH}/namespaces/{floor_namespace}/modeldeployments"
    apply_query = "?fieldManager=floor&force=true"
    requests: list[tuple[str, str, Any, str]] = []
    for name in names:
        md = harness.model_deployment(name, spec())
        md["metadata"]["namespace"] = floor_namespace
        requests.append(("PATCH", f"{md_base}/{name}{apply_query}", md, "application/apply-patch+yaml"))
    skipped: Counter[str] = Counter()
    for count, event in enumerate(operator_writes):
        request = _equivalent(event, count, floor_namespace, md_base, apply_query, bodies, statuses)
        if request is None:
            skipped[f"{event.verb} {event.resource}/{event.subresource}".rstrip("/")] += 1
        else:
            requests.append(request)

    client = PlainClient(cluster.kubeconfig)
    failures: Counter[int] = Counter()
    try:
        started = time.perf_counter()
        for method, path, body, content_type in requests:
            status = client.send(method, path, body, content_type)
            if status >= 400:
                failures[status] += 1
        elapsed = time.perf_counter() - started
    finally:
        client.close()
    if failures:
        raise RuntimeError(f"the floor client's writes failed: {dict(failures)}")
    return elapsed, len(requests), dict(skipped)


def _equivalent(
    event: AuditEvent,
    count: int,
    namespace: str,
    md_base: str,
    apply_query: str,
    bodies: dict[tuple[str, str], dict[str, Any]],
    statuses: dict[str, dict[str, Any]],
) -> tuple[str, str, Any, str] | None:
    """The plain client's version of one operator write, or None if it has no equivalent here."""
    if event.resource in CHILD_RESOURCES and event.verb in {"create", "patch", "update"}:
        body = bodies.get((event.resource, event.name))
        if body is None:
            return None
        group = kubeapi.CHILD_PATHS[event.resource]
        path = f"{group}/namespaces/{namespace}/{event.resource}/{event.name}{apply_query}"
        return ("PATCH", path, body, "application/apply-patch+yaml")
    if event.resource == "modeldeployments" and event.subresource == "status":
        # The final status, with a message that differs from the previous write's, so that every
        # replayed write changes the object as the operator's did.
        status = dict(statuses.get(event.name) or {})
        status["message"] = f"floor write {count}"
        return ("PATCH", f"{md_base}/{event.name}/status", {"status": status}, "application/merge-patch+json")
    if event.resource == "modeldeployments" and not event.subresource:
        patch = {"metadata": {"annotations": {"modeldeploy.dev/floor": str(count)}}}
        return ("PATCH", f"{md_base}/{event.name}", patch, "application/merge-patch+json")
    if event.resource == "events" and event.verb == "create":
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"floor-{count}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": harness.API_VERSION,
                "kind": "ModelDeployment",
                "namespace": namespace,
                "name": event.name or "floor",
            },
            "reason": "Floor",
            "message": f"floor write {count}",
            "type": "Normal",
        }
        return ("POST", f"/api/v1/namespaces/{namespace}/events", body, "application/json")
    return None


# --------------------------------------------------------------------------------------------------
# One size


def run_size(
    cluster: DevCluster, api: kubeapi.KubeApi, n: int, resync: int, work: Path, timeout: float
) -> SizeResult:
    namespace = f"bench-{n}"
    names = model_names(n)
    harness.create_namespace(cluster, namespace)
    # The chart's default: every namespace, a ClusterRole. Nothing else in the cluster holds
    # ModelDeployments while it runs (the floor runs after it stops; each size cleans up before the next).
    rbac = harness.install_chart_rbac(cluster, release=f"bench-{n}", namespace=f"bench-operator-{n}")
    operator = harness.OperatorProcess(
        rbac.kubeconfig, work / f"operator-{n}.log", scope=("--all-namespaces",), resync_seconds=resync
    )
    manifests = work / f"models-{n}.json"
    write_manifests(manifests, names)
    errors: list[str] = []
    operator.start()
    try:
        mark = cluster.audit_log.mark()
        wall_start = time.time()
        started = time.monotonic()
        sampler = RssSampler(operator.pid, started)
        sampler.start()
        cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", str(manifests), timeout=timeout)
        apply_s = time.monotonic() - started

        children_s = status_s = ready_s = None
        deadline = started + timeout
        interval = 0.5 if n <= 100 else 1.0
        while time.monotonic() < deadline:
            seen = progress(api, namespace)
            now = time.monotonic() - started
            if children_s is None and seen.children == n:
                children_s = now
            if status_s is None and seen.status == n:
                status_s = now
            if ready_s is None and seen.ready == n:
                ready_s = now
            if seen.ready == n and seen.children == n:
                break
            time.sleep(interval)
        else:
            errors.append(f"not converged in {timeout:.0f} s: {progress(api, namespace)}")
        try:
            wait_quiet(cluster, rbac.user, timeout=120)
        except TimeoutError as err:
            errors.append(str(err))
        writes = cluster.audit_log.writes(user=rbac.user, since=mark)
        cpu_at_convergence = operator.usage().cpu_seconds
        converged_s = (max(audit_time(e) for e in writes) - wall_start) if writes and ready_s else None
        after_ready = [e for e in writes if ready_s is not None and audit_time(e) - wall_start > ready_s]

        # Steady state: one full resync period (and a margin), with everything converged.
        reconciles_before = _reconciles(operator)
        steady_mark = cluster.audit_log.mark()
        steady_window = resync * 1.2 + 2
        time.sleep(steady_window)
        steady = cluster.audit_log.writes(user=rbac.user, since=steady_mark)
        reconciles_after = _reconciles(operator)
        usage = operator.usage()
        sampler.stop_event.set()
        forbidden = operator.forbidden_log_lines() + harness.forbidden_requests(cluster, rbac.user, mark)
        if forbidden:
            errors.append("RBAC denials: " + "; ".join(forbidden[:5]))
    finally:
        operator.stop()

    floor_s, floor_writes, skipped = run_floor(cluster, api, namespace, f"floor-{n}", names, writes)
    rbac.uninstall(cluster)
    for ns in (namespace, f"floor-{n}"):
        cluster.kubectl("delete", "namespace", ns, "--wait=false")
    # Hundreds of deletions keep the controller-manager busy; the next size must not pay for them.
    if not wait_namespaces_gone(cluster, [namespace, f"floor-{n}"], timeout=600):
        errors.append("the namespaces of this size were still being deleted after 600 s")
    steady_reconciles = (
        reconciles_after - reconciles_before
        if reconciles_after is not None and reconciles_before is not None
        else None
    )
    return SizeResult(
        n=n,
        apply_s=round(apply_s, 2),
        children_s=_round(children_s),
        status_s=_round(status_s),
        ready_s=_round(ready_s),
        converged_s=_round(converged_s),
        operator_writes=len(writes),
        writes_per_md=round(len(writes) / n, 2),
        write_mix=mix(writes),
        writes_after_all_ready=mix(after_ready),
        floor_s=round(floor_s, 2),
        floor_writes=floor_writes,
        floor_not_replayed=skipped,
        floor_ratio=round(converged_s / floor_s, 2) if converged_s else None,
        steady_window_s=round(steady_window, 1),
        steady_writes=len(steady),
        steady_write_mix=mix(steady),
        steady_reconciles=steady_reconciles,
        peak_rss_mb=round(usage.peak_rss_bytes / 2**20, 1),
        cpu_s_at_convergence=round(cpu_at_convergence, 2),
        cpu_s_total=round(usage.cpu_seconds, 2),
        rss_samples=sampler.samples,
        errors=errors,
    )


def _round(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def _reconciles(operator: harness.OperatorProcess) -> float | None:
    """Reconciles run by the periodic resync so far (``modeldeploy_reconcile_total{trigger="resync"}``)."""
    try:
        text = operator.metrics()
    except OSError:
        return None
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("modeldeploy_reconcile_total{") and 'trigger="resync"' in line:
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found or "modeldeploy_reconcile_total" in text else None


def wait_namespaces_gone(cluster: DevCluster, namespaces: Sequence[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = set(cluster.kubectl("get", "namespaces", "-o", "name").stdout.split())
        if not listed & {f"namespace/{ns}" for ns in namespaces}:
            return True
        time.sleep(2)
    return False


# --------------------------------------------------------------------------------------------------
# Reporting


def render_markdown(results: Sequence[SizeResult], machine: dict[str, Any], settings: dict[str, Any]) -> str:
    headers = [
        "N",
        "children (s)",
        "status written (s)",
        "all Ready (s)",
        "converged (s)",
        "floor (s)",
        "converged / floor",
        "writes / MD",
        "steady-state writes",
        "peak RSS (MB)",
        "CPU (s)",
    ]
    rows = [
        [
            str(r.n),
            _fmt(r.children_s),
            _fmt(r.status_s),
            _fmt(r.ready_s),
            _fmt(r.converged_s),
            _fmt(r.floor_s),
            _fmt(r.floor_ratio, "x"),
            f"{r.writes_per_md:.1f}",
            str(r.steady_writes),
            f"{r.peak_rss_mb:.0f}",
            f"{r.cpu_s_at_convergence:.1f}",
        ]
        for r in results
    ]
    lines = [
        markdown_table(headers, rows),
        "",
        f"Machine: {machine_line(machine)}. Kubernetes {settings['kubernetes']}; the operator watches all "
        f"namespaces, resync every {settings['resync_seconds']} s; steady state = one resync period "
        "+ 20 % + 2 s.",
        "",
        "Targets: " + "; ".join(targets(results)),
    ]
    errors = [f"N={r.n}: {e}" for r in results for e in r.errors]
    if errors:
        lines += ["", "Errors: " + "; ".join(errors)]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.2f}{suffix}" if suffix else f"{value:.1f}"


def targets(results: Sequence[SizeResult]) -> list[str]:
    at_target = [r for r in results if r.n == TARGET_SIZE]
    if not at_target:
        return [f"N={TARGET_SIZE} not run (the targets are stated for it)"]
    r = at_target[0]
    ratio = "not converged" if r.floor_ratio is None else f"{r.floor_ratio:.2f}x"
    met_ratio = r.floor_ratio is not None and r.floor_ratio <= TARGET_FLOOR_RATIO
    met_rss = r.peak_rss_mb <= TARGET_RSS_MB
    return [
        f"converged/floor at N={TARGET_SIZE} {ratio} (target <= {TARGET_FLOOR_RATIO:.0f}x: "
        f"{'met' if met_ratio else 'MISSED'})",
        f"peak RSS {r.peak_rss_mb:.0f} MB "
        f"(target <= {TARGET_RSS_MB:.0f} MB: {'met' if met_rss else 'MISSED'})",
        f"steady-state writes {r.steady_writes} (target 0: {'met' if r.steady_writes == 0 else 'MISSED'})",
    ]


def plot(results: Sequence[SizeResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [str(r.n) for r in results]
    fig, (ax_time, ax_writes, ax_rss) = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.38
    xs = range(len(results))
    ax_time.bar([x - width / 2 for x in xs], [r.converged_s or 0 for r in results], width, label="operator")
    ax_time.bar(
        [x + width / 2 for x in xs], [r.floor_s for r in results], width, label="floor (one plain client)"
    )
    ax_time.set_xticks(list(xs), sizes)
    ax_time.set_xlabel("ModelDeployments applied at once")
    ax_time.set_ylabel("seconds to converge")
    ax_time.set_title("Convergence vs the floor")
    ax_time.legend()
    ax_writes.bar(sizes, [r.writes_per_md for r in results], color="tab:green")
    ax_writes.set_xlabel("N")
    ax_writes.set_ylabel("operator writes per ModelDeployment")
    ax_writes.set_title("Write requests (audit log)")
    for r in results:
        if r.rss_samples:
            ax_rss.plot([t for t, _ in r.rss_samples], [m for _, m in r.rss_samples], label=f"N={r.n}")
    ax_rss.axhline(TARGET_RSS_MB, color="red", linestyle="--", label=f"target {TARGET_RSS_MB:.0f} MB")
    ax_rss.set_xlabel("seconds since apply")
    ax_rss.set_ylabel("operator RSS (MB)")
    ax_rss.set_title("Operator memory")
    ax_rss.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def update_readme(markdown: str, readme: Path = README) -> None:
    text = readme.read_text() if readme.exists() else ""
    block = f"{SECTION_BEGIN}\n{markdown.strip()}\n{SECTION_END}"
    if SECTION_BEGIN in text and SECTION_END in text:
        head, rest = text.split(SECTION_BEGIN, 1)
        text = head + block + rest.split(SECTION_END, 1)[1]
    else:
        text = f"{text.rstrip()}\n\n## Latest results\n\n{block}\n"
    write_text(readme, text)


# --------------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = benchmark_parser(
        "python -m bench.controlplane",
        __doc__.split("\n\n")[0],
        quick=f"N = {QUICK_SIZES}, resync {QUICK_RESYNC_SECONDS} s",
        readme=README,
    )
    parser.add_argument("--sizes", type=lambda s: tuple(int(x) for x in s.split(",")), default=None)
    parser.add_argument("--resync-seconds", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=900.0, help="per size, seconds to converge")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy operator and cluster logs here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes: tuple[int, ...] = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    resync: int = args.resync_seconds or (QUICK_RESYNC_SECONDS if args.quick else RESYNC_SECONDS)
    machine = describe_machine()
    cpu_nodes = max(1, -(-max(sizes) // PODS_PER_NODE) + 1)
    nodes = [n for n in DEFAULT_NODES if n.gpus] + [FakeNode(f"cpu-{i}") for i in range(cpu_nodes)]
    results: list[SizeResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-controlplane-") as tmp:
        work = Path(tmp)
        with DevCluster(work / "cluster", ensure_binaries(build=True), nodes=nodes) as cluster:
            harness.install_crds(cluster)
            api = kubeapi.KubeApi(cluster.kubeconfig)
            kubernetes = str(cluster.version().get("gitVersion"))
            try:
                for n in sizes:
                    print(f"bench.controlplane: N={n} ...", file=sys.stderr, flush=True)
                    result = run_size(cluster, api, n, resync, work, args.timeout)
                    results.append(result)
                    print(
                        f"bench.controlplane: N={n}: converged {result.converged_s} s, "
                        f"floor {result.floor_s} s, "
                        f"{result.writes_per_md} writes/MD, steady {result.steady_writes} writes, "
                        f"peak RSS {result.peak_rss_mb} MB",
                        file=sys.stderr,
                        flush=True,
                    )
            finally:
                if args.keep_logs:
                    args.keep_logs.mkdir(parents=True, exist_ok=True)
                    for log in [*work.glob("operator-*.log"), *(work / "cluster" / "logs").glob("*.log")]:
                        shutil.copy(log, args.keep_logs / log.name)

    settings = {
        "sizes": list(sizes),
        "resync_seconds": resync,
        "kubernetes": kubernetes,
        "cpu_nodes": cpu_nodes,
    }
    markdown = render_markdown(results, machine, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(
        args.out / "controlplane.json",
        {
            "benchmark": "controlplane",
            "machine": machine,
            "settings": settings,
            "targets": targets(results),
            "results": [asdict(r) for r in results],
        },
    )
    write_text(args.out / "controlplane.md", markdown)
    plot(results, args.out / "controlplane.png")
    if not args.no_readme:
        update_readme(markdown)
    print(markdown)
    return 1 if any(r.errors for r in results) else 0
