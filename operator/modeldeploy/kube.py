"""The operator's narrow view of the Kubernetes API, on lightkube's async client.

Everything is plain dicts in and out (manifests as the builders write them, objects as the API server
returns them), so the reconciler compares like with like. `Cluster` is the interface the reconciler
needs; `LightkubeCluster` implements it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Mapping
from typing import Any, Protocol, TypeVar, cast

import httpx2 as httpx
from lightkube import ApiError, AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core.resource import NamespacedResource
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Event, Node, PersistentVolumeClaim, Pod, Service
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.types import CascadeType, PatchType

from modeldeploy.kinds import (
    CONFIG_MAP,
    DEPLOYMENT,
    HORIZONTAL_POD_AUTOSCALER,
    JOB,
    MODEL_DEPLOYMENT,
    MODEL_SERVER,
    NETWORK_POLICY,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    POD_DISRUPTION_BUDGET,
    SCALED_OBJECT,
    SERVICE,
    SERVICE_MONITOR,
    Kind,
    kind_of,
)
from modeldeploy.settings import FIELD_MANAGER

_T = TypeVar("_T")
# A list of objects (an alias: inside the classes below, `list` is their method).
Objects = list[dict[str, Any]]

# HTTP statuses worth retrying soon: conflicts, throttling, timeouts and server-side trouble.
_TRANSIENT_CODES = {408, 409, 425, 429, 500, 502, 503, 504}


class KubeError(Exception):
    """An API request that failed; `transient` says whether retrying soon is likely to help."""

    def __init__(self, message: str, code: int | None, transient: bool) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


class Cluster(Protocol):
    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]: ...

    async def apply(
        self, manifest: Mapping[str, Any], field_manager: str = FIELD_MANAGER
    ) -> dict[str, Any]: ...

    async def delete(self, kind: Kind, namespace: str, name: str) -> None: ...

    async def apply_status(
        self, namespace: str, name: str, status: Mapping[str, Any], kind: Kind = MODEL_DEPLOYMENT
    ) -> str | None:
        """Returns the object's resourceVersion after the write (None if it is gone)."""
        ...

    async def create_event(self, event: Mapping[str, Any]) -> None: ...

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> bool:
        """Merge-patches an Event; False if it is gone (expired)."""
        ...

    async def events_for(self, namespace: str, kind: str, name: str) -> Objects:
        """The Events about one object, oldest first."""
        ...

    async def nodes(self) -> Objects: ...

    async def crd_exists(self, name: str) -> bool: ...

    async def container_log(self, namespace: str, pod: str, container: str, tail_lines: int) -> str:
        """The last `tail_lines` lines of a container's log (pods/log)."""
        ...


def _custom_resource(kind: Kind) -> type[GenericNamespacedResource]:
    return create_namespaced_resource(kind.group, kind.version, kind.kind, kind.plural)


_ModelDeployment = _custom_resource(MODEL_DEPLOYMENT)
_ModelServer = _custom_resource(MODEL_SERVER)
_ScaledObject = _custom_resource(SCALED_OBJECT)
_ServiceMonitor = _custom_resource(SERVICE_MONITOR)
_RESOURCES: dict[Kind, type[NamespacedResource]] = {
    DEPLOYMENT: Deployment,
    SERVICE: Service,
    PERSISTENT_VOLUME_CLAIM: PersistentVolumeClaim,
    JOB: Job,
    HORIZONTAL_POD_AUTOSCALER: HorizontalPodAutoscaler,
    POD_DISRUPTION_BUDGET: PodDisruptionBudget,
    NETWORK_POLICY: NetworkPolicy,
    SCALED_OBJECT: _ScaledObject,
    SERVICE_MONITOR: _ServiceMonitor,
    POD: Pod,
    CONFIG_MAP: ConfigMap,
    MODEL_DEPLOYMENT: _ModelDeployment,
    MODEL_SERVER: _ModelServer,
}
_STATUS_RESOURCES: dict[Kind, Any] = {
    MODEL_DEPLOYMENT: _ModelDeployment.Status,
    MODEL_SERVER: _ModelServer.Status,
}


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return dict(obj)
    result: dict[str, Any] = obj.to_dict()
    return result


async def _collect(items: AsyncIterable[Any]) -> Objects:
    return [_as_dict(item) async for item in items]


async def _joined(lines: AsyncIterable[str]) -> str:
    return "".join([line async for line in lines])


async def _call(action: str, request: Awaitable[_T]) -> _T:
    """The request's result; its failure as a KubeError that says what we were doing."""
    try:
        return await request
    except (ApiError, httpx.HTTPError) as exc:
        raise _translate(exc, action) from exc


async def _call_or_none(action: str, request: Awaitable[_T]) -> _T | None:
    """`_call`, but None when the object (or its kind) does not exist."""
    try:
        return await _call(action, request)
    except KubeError as exc:
        if exc.code == 404:
            return None
        raise


def _translate(exc: Exception, action: str) -> KubeError:
    if isinstance(exc, ApiError):
        code = exc.status.code
        message = exc.status.message or str(exc)
        return KubeError(f"{action}: {message}", code, code in _TRANSIENT_CODES)
    if isinstance(exc, httpx.HTTPStatusError):
        # An HTTP answer lightkube did not decode, not a transport failure: the API server answers a path
        # no API serves (a kind whose CRD is not installed) with a plain-text "404 page not found".
        code = exc.response.status_code
        detail = exc.response.text.strip()[:200]
        return KubeError(f"{action}: HTTP {code}: {detail}", code, code in _TRANSIENT_CODES)
    return KubeError(f"{action}: {type(exc).__name__}: {exc}", None, True)


class LightkubeCluster:
    """`Cluster` on lightkube's AsyncClient (KUBECONFIG, ~/.kube/config or the in-cluster account)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @classmethod
    def from_env(cls) -> LightkubeCluster:
        return cls(AsyncClient(config=KubeConfig.from_env(), field_manager=FIELD_MANAGER))

    async def close(self) -> None:
        await self._client.close()

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        found = await _call_or_none(
            f"get {kind} {namespace}/{name}", self._client.get(_RESOURCES[kind], name, namespace=namespace)
        )
        return None if found is None else _as_dict(found)

    async def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        items = self._client.list(_RESOURCES[kind], namespace=namespace, labels=dict(labels))
        # None: the kind's CRD is not installed.
        return await _call_or_none(f"list {kind} in {namespace}", _collect(items)) or []

    async def apply(self, manifest: Mapping[str, Any], field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        kind = kind_of(manifest)
        metadata = manifest["metadata"]
        applied = await _call(
            f"apply {kind} {metadata['namespace']}/{metadata['name']}",
            self._client.patch(
                _RESOURCES[kind],
                metadata["name"],
                dict(manifest),
                namespace=metadata["namespace"],
                patch_type=PatchType.APPLY,
                field_manager=field_manager,
                force=True,
            ),
        )
        return _as_dict(applied)

    async def delete(self, kind: Kind, namespace: str, name: str) -> None:
        await _call_or_none(
            f"delete {kind} {namespace}/{name}",
            self._client.delete(_RESOURCES[kind], name, namespace=namespace, cascade=CascadeType.BACKGROUND),
        )

    async def apply_status(
        self, namespace: str, name: str, status: Mapping[str, Any], kind: Kind = MODEL_DEPLOYMENT
    ) -> str | None:
        body = {
            "apiVersion": kind.api_version,
            "kind": kind.kind,
            "metadata": {"name": name, "namespace": namespace},
            "status": dict(status),
        }
        written = await _call_or_none(
            f"update status of {namespace}/{name}",
            self._client.patch(
                _STATUS_RESOURCES[kind],
                name,
                body,
                namespace=namespace,
                patch_type=PatchType.APPLY,
                field_manager=FIELD_MANAGER,
                force=True,
            ),
        )
        if written is None:  # deleted meanwhile: nothing left to report on
            return None
        version = (_as_dict(written).get("metadata") or {}).get("resourceVersion")
        return str(version) if version is not None else None

    async def create_event(self, event: Mapping[str, Any]) -> None:
        await _call("create event", self._client.create(cast(Event, Event.from_dict(dict(event)))))

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> bool:
        patched = await _call_or_none(
            "patch event",
            self._client.patch(Event, name, dict(patch), namespace=namespace, patch_type=PatchType.MERGE),
        )
        return patched is not None

    async def events_for(self, namespace: str, kind: str, name: str) -> Objects:
        selector: dict[str, Any] = {"involvedObject.kind": kind, "involvedObject.name": name}
        found = await _call(
            f"list events of {kind} {namespace}/{name}",
            _collect(self._client.list(Event, namespace=namespace, fields=selector)),
        )
        return sorted(
            found, key=lambda event: str(event.get("lastTimestamp") or event.get("eventTime") or "")
        )

    async def nodes(self) -> Objects:
        return await _call("list nodes", _collect(self._client.list(Node)))

    async def container_log(self, namespace: str, pod: str, container: str, tail_lines: int) -> str:
        lines = self._client.log(pod, namespace=namespace, container=container, tail_lines=tail_lines)
        return await _call(f"read the log of {container} in pod {namespace}/{pod}", _joined(lines))

    async def crd_exists(self, name: str) -> bool:
        found = await _call_or_none(
            f"get CustomResourceDefinition {name}", self._client.get(CustomResourceDefinition, name)
        )
        return found is not None
