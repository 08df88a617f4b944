"""Publishing a ModelDeployment's status: written only when it changed, with an Event per change of Ready
(a repeat of a recent one bumps that Event's count instead) and the canary's Events after it. It also
remembers what it wrote, so that an object read before that write is not taken for the current status."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modeldeploy.api import ModelDeploymentStatus
from modeldeploy.kinds import EVENT, MODEL_DEPLOYMENT
from modeldeploy.kube import Cluster, KubeError
from modeldeploy.metrics import Metrics
from modeldeploy.rollout import Event as RolloutEvent
from modeldeploy.settings import FIELD_MANAGER
from modeldeploy.status import Transition, comparable, now_rfc3339, transitions

logger = logging.getLogger(__name__)

# An Event repeating a recent one (same reason and type) within this window bumps its count instead.
EVENT_AGGREGATION_SECONDS = 600.0


@dataclass
class _StatusMemory:
    """The status we last wrote, the resourceVersion of the object we computed it from, and the one our
    write gave the object."""

    based_on_resource_version: str | None
    written_resource_version: str | None
    status: ModelDeploymentStatus

    def newer_than(self, resource_version: str | None) -> bool:
        """Whether an object at `resource_version` predates our write (so its status is not ours yet)."""
        if resource_version == self.based_on_resource_version:
            return True
        try:
            # The API server's resourceVersions are etcd revisions; a watch or index can lag behind our
            # own write by several of them (other writers, or our earlier status writes).
            return int(resource_version or "") < int(self.written_resource_version or "")
        except ValueError:
            return False


class StatusPublisher:
    """Writes the status and posts the Events of one operator's ModelDeployments."""

    def __init__(
        self, cluster: Cluster, metrics: Metrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cluster = cluster
        self.metrics = metrics
        self._clock = clock
        self._memory: dict[str, _StatusMemory] = {}
        # uid -> (reason, type) -> the Event last posted for it: (name, count, monotonic time).
        self._posted: dict[str, dict[tuple[str, str], tuple[str, int, float]]] = {}
        self._instance = socket.gethostname()

    def forget(self, uid: str) -> None:
        """Drop what is remembered about a deleted ModelDeployment."""
        self._memory.pop(uid, None)
        self._posted.pop(uid, None)

    def previous(self, body: Mapping[str, Any]) -> ModelDeploymentStatus | None:
        metadata = body.get("metadata") or {}
        memory = self._memory.get(str(metadata.get("uid")))
        if memory is not None and memory.newer_than(metadata.get("resourceVersion")):
            # `body` predates our last status write (an index or event that lags behind): trust our own
            # record, or the status would be written again and its transitions posted twice.
            return memory.status
        raw = body.get("status")
        if not raw:
            return None
        # Only our own fields: anything another writer left in the status is not ours to compare.
        known = {field.alias or name for name, field in ModelDeploymentStatus.model_fields.items()}
        try:
            return ModelDeploymentStatus.model_validate({k: v for k, v in raw.items() if k in known})
        except ValueError:
            logger.warning("ignoring an unreadable status on %s", metadata.get("name"))
            return None

    async def publish(
        self, body: Mapping[str, Any], previous: ModelDeploymentStatus | None, status: ModelDeploymentStatus
    ) -> int:
        """Write `status` if it differs from `previous`, with an Event if Ready changed (`transitions`)."""
        if comparable(previous) == comparable(status):
            return 0
        metadata = body["metadata"]
        namespace, name = metadata.get("namespace", "default"), metadata["name"]
        written = await self.cluster.apply_status(namespace, name, status.dump())
        self.metrics.writes.labels(kind=MODEL_DEPLOYMENT.kind, verb="status").inc()
        self._memory[str(metadata["uid"])] = _StatusMemory(metadata.get("resourceVersion"), written, status)
        writes = 1
        for transition in transitions(previous, status):
            try:
                writes += await self._post(body, transition)
            except KubeError as exc:
                logger.warning("could not post an Event on %s/%s: %s", namespace, name, exc)
        return writes

    async def post_rollout_events(self, body: Mapping[str, Any], events: list[RolloutEvent]) -> int:
        """The canary's Events (a step passed, promoted, rolled back with the metric, value and threshold),
        posted after the status that records the change, so a retried round does not post them twice."""
        posted = 0
        for event in events:
            try:
                await self.cluster.create_event(self._event(body, event.type, event.reason, event.message))
            except KubeError as exc:
                logger.warning("could not post an Event on %s: %s", body["metadata"]["name"], exc)
                continue
            self.metrics.writes.labels(kind=EVENT.kind, verb="create").inc()
            posted += 1
        return posted

    async def _post(self, body: Mapping[str, Any], transition: Transition) -> int:
        """Post the Event of a change of Ready; a repeat of a recent one (a flapping pod) bumps its count
        instead, as the kubelet's Event correlator does."""
        metadata = body["metadata"]
        namespace = metadata.get("namespace", "default")
        message = f"Ready is {transition.status.value}: {transition.message}"
        posted = self._posted.setdefault(str(metadata["uid"]), {})
        key = (transition.reason, transition.event_type)
        now = self._clock()
        recent = posted.get(key)
        if recent is not None and now - recent[2] < EVENT_AGGREGATION_SECONDS:
            event_name, count, _ = recent
            patch = {"count": count + 1, "lastTimestamp": now_rfc3339(), "message": message[:1024]}
            if await self.cluster.patch_event(namespace, event_name, patch):
                posted[key] = (event_name, count + 1, now)
                self.metrics.writes.labels(kind=EVENT.kind, verb="patch").inc()
                return 1
        event = self._event(body, transition.event_type, transition.reason, message)
        await self.cluster.create_event(event)
        posted[key] = (event["metadata"]["name"], 1, now)
        self.metrics.writes.labels(kind=EVENT.kind, verb="create").inc()
        return 1

    def _event(self, body: Mapping[str, Any], event_type: str, reason: str, message: str) -> dict[str, Any]:
        metadata = body["metadata"]
        namespace = metadata.get("namespace", "default")
        stamp = now_rfc3339()
        return {
            "apiVersion": EVENT.api_version,
            "kind": EVENT.kind,
            "metadata": {
                "name": f"{metadata['name'][:236]}.{time.time_ns():x}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": body.get("apiVersion", MODEL_DEPLOYMENT.api_version),
                "kind": body.get("kind", MODEL_DEPLOYMENT.kind),
                "name": metadata["name"],
                "namespace": namespace,
                "uid": metadata["uid"],
                "resourceVersion": metadata.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": self._instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
