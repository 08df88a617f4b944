"""kopf wiring of ModelServers (server_reconcile.py), registered beside the ModelDeployment handlers.

A server is reconciled when it changes, when a ModelDeployment naming it changes or goes, and every
`POLL_SECONDS` (its models' states live in each pod's Triton, which sends no Kubernetes events). After
each round the ModelDeployments placed on it are queued, since their Ready reads the server's status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import kopf

from modeldeploy.api import SpecError
from modeldeploy.kinds import MODEL_DEPLOYMENT, MODEL_SERVER
from modeldeploy.kube import KubeError, LightkubeCluster
from modeldeploy.queue import ReconcileQueue
from modeldeploy.server_reconcile import ServerReconciler, TritonIndexStates
from modeldeploy.settings import RenderSettings


class OperatorConfig(Protocol):
    @property
    def render(self) -> RenderSettings: ...


class Runtime(Protocol):
    """What the server handlers use of the ModelDeployment handlers' runtime (modeldeploy.handlers; a
    protocol, so that this module does not import the module that registers it)."""

    @property
    def cluster(self) -> LightkubeCluster | None: ...
    @property
    def config(self) -> OperatorConfig: ...
    @property
    def index(self) -> Mapping[str, Any] | None: ...
    @property
    def queue(self) -> ReconcileQueue | None: ...


logger = logging.getLogger(__name__)
POLL_SECONDS = 10.0
MODEL_SERVERS = (MODEL_SERVER.group, MODEL_SERVER.version, MODEL_SERVER.plural)
MODEL_DEPLOYMENTS = (MODEL_DEPLOYMENT.group, MODEL_DEPLOYMENT.version, MODEL_DEPLOYMENT.plural)


def server_of(body: Mapping[str, Any]) -> str | None:
    server = ((body.get("spec") or {}).get("server")) or {}
    name = server.get("name")
    return str(name) if name else None


def register_servers(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def reconcile_server(namespace: str, name: str) -> None:
        cluster = runtime.cluster
        if cluster is None:
            return
        async with locks.setdefault((namespace, name), asyncio.Lock()):
            body = await cluster.get(MODEL_SERVER, namespace, name)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                return
            reconciler = ServerReconciler(cluster, runtime.config.render, TritonIndexStates())
            try:
                outcome = await reconciler.reconcile(body)
            except SpecError as exc:
                logger.warning("ModelServer %s/%s: %s", namespace, name, exc)
                return
            status = outcome.status.dump()
            if (body.get("status") or {}) != status:
                await cluster.apply_status(namespace, name, status, kind=MODEL_SERVER)
            for uid, snapshot in list((runtime.index or {}).items()):
                for model in snapshot:
                    placed_here = (model.get("metadata") or {}).get("namespace") == namespace
                    if placed_here and server_of(model) == name and runtime.queue is not None:
                        runtime.queue.notify(str(uid), "server")

    known: set[tuple[str, str]] = set()
    tasks: list[asyncio.Task[None]] = []

    @kopf.on.event(*MODEL_SERVERS, registry=registry, id="reconcile-server")
    async def server_changed(event: Mapping[str, Any], namespace: str | None, name: str, **_: Any) -> None:
        if namespace is None:
            return
        if event.get("type") == "DELETED":
            known.discard((namespace, name))
            return
        known.add((namespace, name))
        await reconcile_server(namespace, name)

    async def poll_forever() -> None:
        # Not a kopf timer: kopf would patch the ModelServer to keep its timer's state, and the operator's
        # role may only write the status.
        while True:
            await asyncio.sleep(POLL_SECONDS)
            for namespace, name in sorted(known):
                try:
                    await reconcile_server(namespace, name)
                except (KubeError, OSError) as exc:  # the next round retries
                    logger.warning("ModelServer %s/%s: %s", namespace, name, exc)

    @kopf.on.startup(registry=registry, id="poll-server-models")
    async def start_polling(**_: Any) -> None:
        tasks.append(asyncio.get_running_loop().create_task(poll_forever()))

    @kopf.on.cleanup(registry=registry, id="stop-polling-server-models")
    async def stop_polling(**_: Any) -> None:
        for task in tasks:
            task.cancel()

    @kopf.on.event(*MODEL_DEPLOYMENTS, registry=registry, id="server-of-modeldeployment")
    async def placed_model_changed(body: kopf.Body, namespace: str | None, **_: Any) -> None:
        server = server_of(body)
        if server is not None and namespace is not None:
            await reconcile_server(namespace, server)
