"""Reconciliation of a ModelDeployment placed on a shared ModelServer (`spec.server`).

Such a model has no Deployment, Service or autoscaler of its own: its repository is built by a Job into
the server's cache claim (content-addressed, as for `spec.cache`), for the server's device; the server's
reconcile (server_reconcile.py) lists it for its agents to load once its recorded memory fits. This
model's status reads the server's: Ready only when the server reports it READY in every replica.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import partial
from typing import Any, Protocol

from modeldeploy.api import (
    Cache,
    Endpoints,
    ModelDeployment,
    ModelDeploymentStatus,
    ModelRepositoryStatus,
    Phase,
    SpecError,
)
from modeldeploy.kinds import (
    DEPLOYMENT,
    HORIZONTAL_POD_AUTOSCALER,
    MODEL_SERVER,
    POD,
    POD_DISRUPTION_BUDGET,
    SCALED_OBJECT,
    SERVICE,
    Kind,
)
from modeldeploy.kube import Cluster
from modeldeploy.manifests import desired_state
from modeldeploy.manifests.model_server import model_endpoint
from modeldeploy.observations import Observed, one_line
from modeldeploy.publish import StatusPublisher
from modeldeploy.round import Outcome, Round
from modeldeploy.server_api import ModelServer, parse_model_server
from modeldeploy.settings import ClusterCapabilities, RenderSettings
from modeldeploy.status import (
    AVAILABLE,
    MODEL_REPOSITORY_READY,
    READY,
    now_rfc3339,
    repository_verdict,
    status_of,
)
from modeldeploy.verdict import FALSE, TRUE, UNKNOWN, Verdict


class Reconciler(Protocol):
    """What a placed model's reconcile uses of modeldeploy.reconcile's Reconciler (a protocol, so that
    this module does not import the reconciler that calls it)."""

    @property
    def cluster(self) -> Cluster: ...
    @property
    def settings(self) -> RenderSettings: ...

    async def capabilities(self) -> ClusterCapabilities: ...

    async def ensure_build_job(self, current: Round) -> None: ...

    async def _prune(self, current: Round, kind: Kind, name: str) -> None: ...

    @property
    def publisher(self) -> StatusPublisher: ...


SERVER_NOT_FOUND = "ServerNotFound"
MODEL_LOAD_FAILED = "ModelLoadFailed"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
PLACED_CONDITIONS = (MODEL_REPOSITORY_READY, AVAILABLE, READY)


def as_build_on(md: ModelDeployment, server: ModelServer) -> ModelDeployment:
    """The ModelDeployment as its build sees it: built into the server's cache, for the server's device."""
    spec = md.spec.model_copy(
        update={
            "cache": Cache(claim_name=server.spec.cache.claim_name),
            "resources": server.spec.resources,
            "server": None,
        }
    )
    return md.model_copy(update={"spec": spec})


def memory_from_build(pods: list[dict[str, Any]]) -> int | None:
    """`memoryBytes` from the termination message a succeeded builder left (model_repo.cli.build)."""
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode") != 0:
                continue
            try:
                value = json.loads(terminated.get("message") or "{}").get("memoryBytes")
            except (ValueError, AttributeError):
                continue
            if isinstance(value, int):
                return value
    return None


def serving_verdict(md: ModelDeployment, server_body: Mapping[str, Any] | None) -> Verdict:
    """Available, from the server's status entry of this model."""
    assert md.spec.server is not None
    name = md.spec.server.name
    # Every verdict here is the Available condition's.
    available, failure = partial(Verdict, AVAILABLE), partial(Verdict.failure, AVAILABLE)
    if server_body is None:
        return failure(
            SERVER_NOT_FOUND, f"ModelServer {name} does not exist in namespace {md.metadata.namespace}"
        )
    entries = ((server_body.get("status") or {}).get("models")) or []
    entry = next((e for e in entries if e.get("name") == md.metadata.name), None)
    if entry is None:
        return available(UNKNOWN, "Placing", f"ModelServer {name} has not placed this model yet")
    state, message = str(entry.get("state")), str(entry.get("message") or "")
    if state == "READY":
        return available(TRUE, "Loaded", f"READY in every replica of ModelServer {name}")
    if state == "UNAVAILABLE":
        return failure(MODEL_LOAD_FAILED, f"ModelServer {name} could not load it: {one_line(message)}")
    if state[:1].isupper() and state != state.upper():  # a placement reason (InsufficientServerCapacity…)
        return available(FALSE, state, message, failed=state != "RepositoryNotBuilt")
    return available(FALSE, "Loading", f"{state} on ModelServer {name}: {message}".rstrip(": "))


def placed_status(
    md: ModelDeployment,
    repository: Verdict,
    serving: Verdict,
    server: ModelServer | None,
    digest: str,
    memory: int | None,
    previous: ModelDeploymentStatus | None,
) -> ModelDeploymentStatus:
    if repository.status is not TRUE:
        ready = Verdict(READY, FALSE, repository.reason, repository.message, repository.failed)
    else:
        ready = Verdict(READY, serving.status, serving.reason, serving.message, serving.failed)
    verdicts = {v.type: v for v in (repository, serving, ready)}
    if ready.status is TRUE:
        phase = Phase.READY
    elif ready.failed:
        phase = Phase.FAILED
    else:
        phase = Phase.BUILDING if repository.status is not TRUE else Phase.DEPLOYING
    model_name = md.metadata.name
    return status_of(
        verdicts,
        PLACED_CONDITIONS,
        ready,
        phase,
        previous,
        md.metadata.generation,
        now_rfc3339(),
        endpoints=Endpoints.model_validate(model_endpoint(server, model_name)) if server else None,
        model_repository=ModelRepositoryStatus(digest=digest, task=md.spec.model.task, memory_bytes=memory),
    )


async def reconcile_placed(
    reconciler: Reconciler,
    body: Mapping[str, Any],
    md: ModelDeployment,
    previous: ModelDeploymentStatus | None,
) -> Outcome:

    assert md.spec.server is not None
    namespace = md.metadata.namespace
    uid = str(md.metadata.uid)
    server_body = await reconciler.cluster.get(MODEL_SERVER, namespace, md.spec.server.name)
    server = None
    if server_body is not None:
        try:
            server = parse_model_server(dict(server_body))
        except SpecError:
            server = None  # the server's own status says what is wrong with it
    capabilities = await reconciler.capabilities()
    build_md = as_build_on(md, server) if server is not None else md
    current = Round(
        md=build_md,
        uid=uid,
        desired=desired_state(build_md, reconciler.settings, capabilities),
        capabilities=capabilities,
        observed=Observed(digest=""),
    )
    current.observed.digest = current.desired.digest
    # Moved here from a dedicated Deployment: what that left behind goes.
    names = current.desired.owner.names
    for kind, name in (
        (DEPLOYMENT, names.deployment),
        (SERVICE, names.service),
        (HORIZONTAL_POD_AUTOSCALER, names.autoscaler),
        (POD_DISRUPTION_BUDGET, names.pod_disruption_budget),
    ):
        await reconciler._prune(current, kind, name)
    if capabilities.keda:
        await reconciler._prune(current, SCALED_OBJECT, names.autoscaler)
    memory = None
    if server is not None:
        await reconciler.ensure_build_job(current)
        job = current.observed.build_job
        if job is not None:
            pods = await reconciler.cluster.list(POD, namespace, {JOB_NAME_LABEL: job["metadata"]["name"]})
            current.observed.build_pods = pods
            memory = memory_from_build(pods)
        repository = repository_verdict(build_md, current.observed)
    else:
        repository = Verdict(MODEL_REPOSITORY_READY, UNKNOWN, "Pending", "built once its ModelServer exists")
    status = placed_status(
        md, repository, serving_verdict(md, server_body), server, current.desired.digest, memory, previous
    )
    current.writes += await reconciler.publisher.publish(body, previous, status)
    ready = status.phase is Phase.READY
    return Outcome(writes=current.writes, ready=ready, message=status.message or "")
