"""Reconciliation of a ModelServer: place the ModelDeployments that name it, write the model list its
agents load, apply its Deployment, Service and PDB, and compute its status from what each pod's Triton
reports per model.

How a model's state is observed: the operator asks each Ready server pod's Triton for its repository
index (`POST /v2/repository/index` on the pod IP, port 8000: name, state READY/LOADING/UNAVAILABLE and
Triton's reason); a model is READY only when it is READY in every Ready replica (`ModelStates`).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from model_repo.model_set import DESIRED_FILE
from modeldeploy.compare import is_subset
from modeldeploy.kinds import CONFIG_MAP, DEPLOYMENT, MODEL_DEPLOYMENT, POD, POD_DISRUPTION_BUDGET, kind_of
from modeldeploy.kube import Cluster
from modeldeploy.labels import is_owned_by
from modeldeploy.manifests.deployment import HTTP_PORT
from modeldeploy.manifests.model_server import (
    build_model_list,
    build_server_deployment,
    build_server_pod_disruption_budget,
    build_server_service,
    config_map_name,
    selector,
    wants_server_pod_disruption_budget,
)
from modeldeploy.placement import Candidate, Placement, desired_models, gib, place
from modeldeploy.quantity import plain_number
from modeldeploy.server_api import ModelServer, ModelServerStatus, PlacedModel, parse_model_server
from modeldeploy.settings import RenderSettings

READY = "READY"


class ModelStates(Protocol):
    async def states(self, pods: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
        """Model name → (Triton state, reason) across the server's Ready pods."""
        ...


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def combine(per_pod: list[list[dict[str, Any]]]) -> dict[str, tuple[str, str]]:
    """One state per model from each pod's repository index: READY only where every pod says READY; else
    the first other state, with that pod's reason (Triton's load error for UNAVAILABLE)."""
    combined: dict[str, tuple[str, str]] = {}
    for index in per_pod:
        for entry in index:
            name, state = str(entry.get("name")), str(entry.get("state") or "UNKNOWN")
            reason = str(entry.get("reason") or "")
            if combined.get(name, (READY, ""))[0] == READY:
                combined[name] = (state, reason)
    for name in list(combined):  # a model some pod does not list at all is not loaded there
        if any(name not in {str(e.get("name")) for e in index} for index in per_pod):
            combined[name] = ("LOADING", "not loaded in every replica yet")
    return combined


class TritonIndexStates:
    """ModelStates over HTTP: each Ready pod's Triton repository index, on its pod IP. A pod that does not
    answer counts as having loaded nothing yet (its models are not READY everywhere), never as an error
    of the reconcile: the other pods' states and the server's children stay current."""

    timeout_s = 3.0

    def _index(self, ip: str) -> list[dict[str, Any]]:
        request = urllib.request.Request(f"http://{ip}:{HTTP_PORT}/v2/repository/index", data=b"{}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return list(json.loads(response.read() or b"[]"))
        except (OSError, ValueError):
            return []

    async def states(self, pods: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
        ips = [str((p.get("status") or {}).get("podIP") or "") for p in pods if _pod_ready(p)]
        indexes = await asyncio.gather(*(asyncio.to_thread(self._index, ip) for ip in ips if ip))
        return combine(list(indexes))


def listed_models(config_map: Mapping[str, Any] | None) -> set[str]:
    """The models the server's current list holds (they keep their place)."""
    try:
        text = ((config_map or {}).get("data") or {}).get(DESIRED_FILE) or "{}"
        return set((json.loads(text).get("models") or {}).keys())
    except (ValueError, AttributeError):
        return set()


@dataclass
class ServerOutcome:
    writes: int
    placement: Placement
    status: ModelServerStatus


def candidates_for(server: ModelServer, model_deployments: list[dict[str, Any]]) -> list[Candidate]:
    """The ModelDeployments that name this server, with their built repository and its memory (from
    their status: the build Job's termination message records both)."""
    found = []
    for body in model_deployments:
        target = ((body.get("spec") or {}).get("server") or {}).get("name")
        if target != server.metadata.name or (body.get("metadata") or {}).get("deletionTimestamp"):
            continue
        repository = ((body.get("status") or {}).get("modelRepository")) or {}
        found.append(
            Candidate(
                name=str(body["metadata"]["name"]),
                created=str(body["metadata"].get("creationTimestamp") or ""),
                repository=repository.get("digest"),
                memory_bytes=repository.get("memoryBytes"),
            )
        )
    return found


def server_status(
    server: ModelServer,
    placement: Placement,
    states: Mapping[str, tuple[str, str]],
    deployment: Mapping[str, Any] | None,
) -> ModelServerStatus:
    models = []
    for candidate in placement.placed:
        state, reason = states.get(candidate.model_name, ("LOADING", "not loaded yet"))
        models.append(
            PlacedModel(
                name=candidate.name,
                state=state,
                memory=str(candidate.memory_bytes),
                message=reason or None,
            )
        )
    for name, (reason, message) in sorted(placement.refused.items()):
        models.append(PlacedModel(name=name, state=reason, memory="0", message=message))
    ready = sum(1 for m in models if m.state == READY)
    live = (deployment or {}).get("status") or {}
    return ModelServerStatus(
        observed_generation=server.metadata.generation,
        replicas=int(live.get("replicas") or 0),
        ready_replicas=int(live.get("readyReplicas") or 0),
        selector=",".join(f"{k}={v}" for k, v in sorted(selector(server).items())),
        capacity=plain_number(placement.capacity_bytes),
        used=plain_number(placement.used_bytes),
        memory_summary=f"{gib(placement.used_bytes)}/{gib(placement.capacity_bytes)}",
        model_summary=f"{ready}/{len(placement.placed)}",
        models=models,
    )


class ServerReconciler:
    def __init__(self, cluster: Cluster, settings: RenderSettings, states: ModelStates) -> None:
        self.cluster = cluster
        self.settings = settings
        self.states = states

    async def _apply(self, manifest: dict[str, Any], uid: str) -> tuple[dict[str, Any] | None, int]:
        """The live object after applying `manifest` (not when an object of that name is someone else's)."""
        meta = manifest["metadata"]
        kind = kind_of(manifest)
        live = await self.cluster.get(kind, meta["namespace"], meta["name"])
        if live is not None and not is_owned_by(live, uid):
            return None, 0
        if live is not None and is_subset(manifest, live):
            return live, 0
        return await self.cluster.apply(manifest), 1

    async def reconcile(self, body: Mapping[str, Any]) -> ServerOutcome:
        server = parse_model_server(dict(body))
        uid = str(server.metadata.uid)
        namespace = server.metadata.namespace
        model_deployments = await self.cluster.list(MODEL_DEPLOYMENT, namespace, {})
        listed = await self.cluster.get(CONFIG_MAP, namespace, config_map_name(server))
        placement = place(
            server.metadata.name,
            server.spec.capacity_bytes(),
            candidates_for(server, model_deployments),
            loaded=listed_models(listed),
        )
        writes = 0
        wanted = [
            build_model_list(server, desired_models(placement)),
            build_server_deployment(server, self.settings),
            build_server_service(server),
        ]
        if wants_server_pod_disruption_budget(server):
            wanted.append(build_server_pod_disruption_budget(server))
        live: dict[str, dict[str, Any] | None] = {}
        for manifest in wanted:
            live[manifest["kind"]], wrote = await self._apply(manifest, uid)
            writes += wrote
        if not wants_server_pod_disruption_budget(server):
            name = wanted[1]["metadata"]["name"]
            existing = await self.cluster.get(POD_DISRUPTION_BUDGET, namespace, name)
            if existing is not None and is_owned_by(existing, uid):
                await self.cluster.delete(POD_DISRUPTION_BUDGET, namespace, name)
                writes += 1
        pods = await self.cluster.list(POD, namespace, selector(server))
        states = await self.states.states(pods)
        status = server_status(server, placement, states, live.get(DEPLOYMENT.kind))
        return ServerOutcome(writes, placement, status)
