"""The operator's narrow view of the Kubernetes API, on lightkube's async client.

Everything is plain dicts in and out (manifests as the builders write them, objects as the API server
returns them), so the reconciler compares like with like. `Cluster` is the interface the reconciler
needs; `LightkubeCluster` implements it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, cast

import httpx2 as httpx
from lightkube import ApiError, AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core.resource import NamespacedResource
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Event, Node, PersistentVolumeClaim, Pod, Service
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.types import CascadeType, PatchType

from modeldeploy.kinds import (
    DEPLOYMENT,
    HORIZONTAL_POD_AUTOSCALER,
    JOB,
    MODEL_DEPLOYMENT,
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

    async def apply_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> str | None:
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


def _custom_resource(kind: Kind) -> type[GenericNamespacedResource]:
    return create_namespaced_resource(kind.group, kind.version, kind.kind, kind.plural)


_ModelDeployment = _custom_resource(MODEL_DEPLOYMENT)
_ScaledObject = _custom_resource(SCALED_OBJECT)
_ServiceMonitor = _custom_resource(SERVICE_MONITOR)
_RESOURCES: dict[Kind, type[NamespacedResource]] = {
    DEPLOYMENT: Deployment,
    SERVICE: Service,
    PERSISTENT_VOLUME_CLAIM: PersistentVolumeClaim,
    JOB: Job,
    HORIZONTAL_POD_AUTOSCALER: HorizontalPodAutoscaler,
    POD_DISRUPTION_BUDGET: PodDisruptionBudget,
    SCALED_OBJECT: _ScaledObject,
    SERVICE_MONITOR: _ServiceMonitor,
    POD: Pod,
    MODEL_DEPLOYMENT: _ModelDeployment,
}


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return dict(obj)
    result: dict[str, Any] = obj.to_dict()
    return result


def _translate(exc: Exception, action: str) -> KubeError:
    if isinstance(exc, ApiError):
        code = exc.status.code
        message = exc.status.message or str(exc)
        return KubeError(f"{action}: {message}", code, code in _TRANSIENT_CODES)
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
        try:
            return _as_dict(await self._client.get(_RESOURCES[kind], name, namespace=namespace))
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise _translate(exc, f"get {kind} {namespace}/{name}") from exc
        except httpx.HTTPError as exc:
            raise _translate(exc, f"get {kind} {namespace}/{name}") from exc

    async def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        try:
            return [
                _as_dict(item)
                async for item in self._client.list(
                    _RESOURCES[kind], namespace=namespace, labels=dict(labels)
                )
            ]
        except ApiError as exc:
            if exc.status.code == 404:  # the kind's CRD is not installed
                return []
            raise _translate(exc, f"list {kind} in {namespace}") from exc
        except httpx.HTTPError as exc:
            raise _translate(exc, f"list {kind} in {namespace}") from exc

    async def apply(self, manifest: Mapping[str, Any], field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        kind = kind_of(manifest)
        metadata = manifest["metadata"]
        action = f"apply {kind} {metadata['namespace']}/{metadata['name']}"
        try:
            applied = await self._client.patch(
                _RESOURCES[kind],
                metadata["name"],
                dict(manifest),
                namespace=metadata["namespace"],
                patch_type=PatchType.APPLY,
                field_manager=field_manager,
                force=True,
            )
        except (ApiError, httpx.HTTPError) as exc:
            raise _translate(exc, action) from exc
        return _as_dict(applied)

    async def delete(self, kind: Kind, namespace: str, name: str) -> None:
        try:
            await self._client.delete(
                _RESOURCES[kind], name, namespace=namespace, cascade=CascadeType.BACKGROUND
            )
        except ApiError as exc:
            if exc.status.code == 404:
                return
            raise _translate(exc, f"delete {kind} {namespace}/{name}") from exc
        except httpx.HTTPError as exc:
            raise _translate(exc, f"delete {kind} {namespace}/{name}") from exc

    async def apply_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> str | None:
        body = {
            "apiVersion": MODEL_DEPLOYMENT.api_version,
            "kind": MODEL_DEPLOYMENT.kind,
            "metadata": {"name": name, "namespace": namespace},
            "status": dict(status),
        }
        try:
            written = await self._client.patch(
                _ModelDeployment.Status,
                name,
                body,
                namespace=namespace,
                patch_type=PatchType.APPLY,
                field_manager=FIELD_MANAGER,
                force=True,
            )
        except ApiError as exc:
            if exc.status.code == 404:  # deleted meanwhile: nothing left to report on
                return None
            raise _translate(exc, f"update status of {namespace}/{name}") from exc
        except httpx.HTTPError as exc:
            raise _translate(exc, f"update status of {namespace}/{name}") from exc
        version = (_as_dict(written).get("metadata") or {}).get("resourceVersion")
        return str(version) if version is not None else None

    async def create_event(self, event: Mapping[str, Any]) -> None:
        try:
            await self._client.create(cast(Event, Event.from_dict(dict(event))))
        except (ApiError, httpx.HTTPError) as exc:
            raise _translate(exc, "create event") from exc

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> bool:
        try:
            await self._client.patch(
                Event, name, dict(patch), namespace=namespace, patch_type=PatchType.MERGE
            )
        except ApiError as exc:
            if exc.status.code == 404:
                return False
            raise _translate(exc, "patch event") from exc
        except httpx.HTTPError as exc:
            raise _translate(exc, "patch event") from exc
        return True

    async def events_for(self, namespace: str, kind: str, name: str) -> Objects:
        selector: dict[str, Any] = {"involvedObject.kind": kind, "involvedObject.name": name}
        try:
            found = [
                _as_dict(item)
                async for item in self._client.list(Event, namespace=namespace, fields=selector)
            ]
        except (ApiError, httpx.HTTPError) as exc:
            raise _translate(exc, f"list events of {kind} {namespace}/{name}") from exc
        return sorted(
            found, key=lambda event: str(event.get("lastTimestamp") or event.get("eventTime") or "")
        )

    async def nodes(self) -> Objects:
        try:
            return [_as_dict(item) async for item in self._client.list(Node)]
        except (ApiError, httpx.HTTPError) as exc:
            raise _translate(exc, "list nodes") from exc

    async def crd_exists(self, name: str) -> bool:
        try:
            await self._client.get(CustomResourceDefinition, name)
        except ApiError as exc:
            if exc.status.code == 404:
                return False
            raise _translate(exc, f"get CustomResourceDefinition {name}") from exc
        except httpx.HTTPError as exc:
            raise _translate(exc, f"get CustomResourceDefinition {name}") from exc
        return True
