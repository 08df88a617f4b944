"""`modeldeploy operator` and `modeldeploy render`."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from modeldeploy import __version__
from modeldeploy.api import KIND, SpecError
from modeldeploy.checks import parse_for_reconcile
from modeldeploy.manifests import desired_state
from modeldeploy.settings import (
    DEFAULT_BUILDER_IMAGE,
    DEFAULT_PROMETHEUS_URL,
    DEFAULT_TRITON_IMAGE,
    ClusterCapabilities,
    RenderSettings,
)


def env_option(*names: str, **settings: Any) -> Any:
    """A typer option that the environment variable MODELDEPLOY_<its long name> also sets."""
    envvar = "MODELDEPLOY_" + names[0].removeprefix("--").replace("-", "_").upper()
    return typer.Option(*names, envvar=envvar, **settings)


TritonImage = Annotated[
    str,
    env_option("--triton-image", help="Triton server image for the model pods."),
]
BuilderImage = Annotated[
    str,
    env_option(
        "--builder-image", help="Image that runs `modeldeploy build` (init container / cache build Job)."
    ),
]
PrometheusUrl = Annotated[
    str,
    env_option(
        "--prometheus-url",
        help=(
            "Prometheus that KEDA's triggers and the canary analyses query for Triton's metrics "
            "(spec.rollout.canary.analysis.prometheusUrl overrides it per ModelDeployment)."
        ),
    ),
]


def run_operator(
    namespace: Annotated[
        list[str] | None,
        env_option(
            "--namespace",
            "-n",
            help="Namespace to watch (repeatable; globs allowed). All namespaces when omitted.",
        ),
    ] = None,
    all_namespaces: Annotated[
        bool, env_option("--all-namespaces", "-A", help="Watch every namespace.")
    ] = False,
    health_port: Annotated[int, env_option("--health-port", help="Serves GET /healthz.")] = 8080,
    metrics_port: Annotated[int, env_option("--metrics-port", help="Serves Prometheus /metrics.")] = 9090,
    peering: Annotated[
        str | None,
        env_option(
            "--peering",
            help="kopf peering object to coordinate replicas through (needed with more than one replica).",
        ),
    ] = None,
    standalone: Annotated[
        bool, env_option("--standalone", help="No peering (the default without --peering).")
    ] = False,
    triton_image: TritonImage = DEFAULT_TRITON_IMAGE,
    builder_image: BuilderImage = DEFAULT_BUILDER_IMAGE,
    prometheus_url: PrometheusUrl = DEFAULT_PROMETHEUS_URL,
    resync_seconds: Annotated[
        float,
        env_option(
            "--resync-seconds",
            min=1,
            help="Reconcile every ModelDeployment this often even without events (a safety net).",
        ),
    ] = 120.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
) -> None:
    """Run the operator until interrupted (SIGINT/SIGTERM stop it gracefully)."""
    import kopf

    from modeldeploy.handlers import OperatorConfig, build_registry, configure
    from modeldeploy.metrics import Metrics

    if peering and standalone:
        raise typer.BadParameter("--peering and --standalone exclude each other")
    if namespace and all_namespaces:
        raise typer.BadParameter("--namespace and --all-namespaces exclude each other")
    if health_port == metrics_port:
        # The metrics server would take the port first and answer every path, /healthz included, while
        # kopf's health reporter fails to bind and stops the operator.
        raise typer.BadParameter(f"--health-port and --metrics-port are both {health_port}; they must differ")
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    if not verbose:
        # kopf says "Handler 'owner-of-pods' succeeded." at INFO for every watch event it hands over:
        # thousands of lines (and their formatting) per minute in a busy cluster, telling nothing.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    metrics = Metrics()
    metrics.serve(metrics_port)
    config = OperatorConfig(
        render=RenderSettings(
            triton_image=triton_image, builder_image=builder_image, prometheus_url=prometheus_url
        ),
        resync_seconds=resync_seconds,
    )
    registry, _runtime = build_registry(config, metrics)
    settings = kopf.OperatorSettings()
    configure(settings)
    if namespace and not any(set(pattern) & set("*?[!") for pattern in namespace):
        # Exact namespaces need no discovery, and kopf's scanning would list all namespaces, which a
        # namespaced installation may not. The cost: a KEDA or Prometheus-operator CRD installed later
        # is watched from the next restart on (the resync loop reconciles its objects meanwhile).
        settings.scanning.disabled = True
    asyncio.run(
        kopf.operator(
            registry=registry,
            settings=settings,
            clusterwide=not namespace,
            namespaces=list(namespace or []),
            standalone=peering is None,
            peering_name=peering,
            liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz",
        )
    )


def _documents(path: Path) -> list[dict[str, Any]]:
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    try:
        loaded = [doc for doc in yaml.safe_load_all(text) if doc]
    except yaml.YAMLError as exc:
        raise typer.BadParameter(f"{path}: not YAML: {exc}") from exc
    documents: list[dict[str, Any]] = []
    for doc in loaded:
        if isinstance(doc, dict) and doc.get("kind") == "List":
            documents.extend(item for item in doc.get("items") or [] if isinstance(item, dict))
        elif isinstance(doc, dict):
            documents.append(doc)
    return [doc for doc in documents if doc.get("kind") == KIND]


def render(
    filename: Annotated[
        Path, typer.Option("--filename", "-f", help="ModelDeployment YAML (a stream, or '-' for stdin).")
    ],
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="Namespace for objects whose ModelDeployment names none."),
    ] = None,
    triton_image: TritonImage = DEFAULT_TRITON_IMAGE,
    builder_image: BuilderImage = DEFAULT_BUILDER_IMAGE,
    prometheus_url: PrometheusUrl = DEFAULT_PROMETHEUS_URL,
    service_monitor: Annotated[
        bool,
        typer.Option(
            "--service-monitor/--no-service-monitor",
            help="Include the ServiceMonitor (created when the Prometheus operator's CRD exists).",
        ),
    ] = True,
) -> None:
    """Print, as a YAML stream, every object the operator would create for the ModelDeployments in a file.

    Offline: nothing is read from or sent to a cluster. The ModelDeployment has no uid until it is created,
    so the owner references the operator adds are left out.
    """
    documents = _documents(filename)
    if not documents:
        typer.echo(f"error: {filename} holds no {KIND}", err=True)
        raise typer.Exit(1)
    settings = RenderSettings(
        triton_image=triton_image, builder_image=builder_image, prometheus_url=prometheus_url
    )
    capabilities = ClusterCapabilities(service_monitors=service_monitor, keda=True)
    rendered: list[str] = []
    failed = False
    for doc in documents:
        metadata = dict(doc.get("metadata") or {})
        metadata.setdefault("namespace", namespace or "default")
        try:
            md = parse_for_reconcile({**doc, "metadata": metadata})
        except SpecError as exc:
            failed = True
            for message in exc.messages:
                typer.echo(f"error: {KIND} {metadata.get('name')}: {message}", err=True)
            continue
        for manifest in desired_state(md, settings, capabilities).manifests():
            rendered.append(yaml.safe_dump(manifest, sort_keys=False))
    header = (
        f"# Rendered by modeldeploy {__version__} (offline). The operator also sets ownerReferences to the\n"
        "# ModelDeployment and a modeldeploy.dev/applied-hash annotation on each object.\n"
    )
    sys.stdout.write(header + "---\n".join(rendered))
    if failed:
        raise typer.Exit(1)
