"""An in-memory `Cluster` for the fast reconciler tier (tests/operator/test_reconcile_fast.py).

It models what the API server does that the reconciler's own rules depend on, and nothing else:

- server-side apply per field manager: each manager owns the fields its last apply set (merged into the
  object, keyed lists by their merge key); `force` takes fields over from other managers; a field that
  an apply stops setting is removed only when no other manager still owns it, and a Deployment's
  `spec.replicas` that nobody owns falls back to its default of 1 (what the replicas hand-off exists for);
- `metadata.managedFields` in the API server's `fieldsV1` form, which the reconciler reads;
- resourceVersion (one counter for the whole cluster, like etcd's revision) and generation bumped only by
  a write that changes something — a no-op apply is still a write *request*, and counted as one;
- garbage collection of the objects that name a deleted one as their owner;
- configurable refusals: `reject()` makes the API server refuse an apply as it would an invalid object,
  a forbidden verb or an overloaded server (a transient code);
- the optional CRDs (KEDA, Prometheus Operator): without one, its kinds are unknown.

What it does not model is what only the API server and the controllers prove (defaulting beyond
`replicas`, admission, RBAC, the Deployment/Job controllers, the scheduler): tests/operator/
test_reconcile_cluster.py and tests/e2e keep those. Controllers' effects that a test needs (a Job that
succeeded, ready replicas) are set with `set_status()`, as the controller would write them.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modeldeploy.kinds import (
    DEPLOYMENT,
    KEDA_CRD,
    MODEL_DEPLOYMENT,
    SCALED_OBJECT,
    SERVICE_MONITOR,
    SERVICE_MONITOR_CRD,
    Kind,
    kind_of,
)
from modeldeploy.kube import (
    KubeError,
    Objects,
)
from modeldeploy.settings import FIELD_MANAGER

# A field's path as managedFields spell it: ("f:spec", "f:template", ..., 'k:{"name":"triton"}', ...).
Path = tuple[str, ...]
Key = tuple[Kind, str, str]

# The merge keys of the keyed lists in the objects the operator writes (from the Kubernetes OpenAPI
# schema's x-kubernetes-list-map-keys / patchMergeKey); every other list is atomic.
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "ports": ("containerPort", "port"),
    "ownerReferences": ("uid",),
    "imagePullSecrets": ("name",),
}
# Identity and type, not fields a manager owns.
UNOWNED: set[Path] = {("f:apiVersion",), ("f:kind",), ("f:metadata", "f:name"), ("f:metadata", "f:namespace")}
CRD_OF: dict[Kind, str] = {SCALED_OBJECT: KEDA_CRD, SERVICE_MONITOR: SERVICE_MONITOR_CRD}
# What LightkubeCluster reports as transient (worth retrying soon).
TRANSIENT_CODES = {408, 409, 425, 429, 500, 502, 503, 504}
# Fields that the API server defaults when nobody sets them.
DEFAULTS: dict[Kind, dict[Path, Any]] = {DEPLOYMENT: {("f:spec", "f:replicas"): 1}}


@dataclass(frozen=True)
class Write:
    """One write request, as the API server's audit log would record it."""

    verb: str  # apply, delete, status, create, patch, update
    kind: str
    namespace: str
    name: str
    manager: str = FIELD_MANAGER


@dataclass
class _Stored:
    obj: dict[str, Any]
    # manager -> (operation, the leaf fields it owns)
    managers: dict[str, tuple[str, set[Path]]] = field(default_factory=dict)
    # managedFields as last committed (a change of ownership alone is a change, as in the API server)
    managed_fields: list[dict[str, Any]] = field(default_factory=list)


def _merge_key(name: str, items: Sequence[Any]) -> str | None:
    for key in MERGE_KEYS.get(name, ()):
        if items and all(isinstance(item, Mapping) and key in item for item in items):
            return key
    return None


def _item_path(key: str, item: Mapping[str, Any]) -> str:
    return "k:" + json.dumps({key: item[key]}, separators=(",", ":"))


def leaf_fields(value: Any, path: Path = (), name: str = "") -> Iterator[Path]:
    """The leaf fields a manifest sets, as managedFields paths (an empty map or an atomic list is a leaf)."""
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from leaf_fields(item, (*path, f"f:{key}"), str(key))
    elif isinstance(value, list) and (key := _merge_key(name, value)) is not None:
        for item in value:
            yield from leaf_fields(item, (*path, _item_path(key, item)))
    else:
        yield path


def _child(container: Any, step: str) -> Any:
    """The value at one path step, or None."""
    if step.startswith("f:") and isinstance(container, Mapping):
        return container.get(step[2:])
    if step.startswith("k:") and isinstance(container, list):
        wanted = json.loads(step[2:])
        for item in container:
            if isinstance(item, Mapping) and all(item.get(k) == v for k, v in wanted.items()):
                return item
    return None


def value_at(obj: Any, path: Path) -> Any:
    for step in path:
        obj = _child(obj, step)
        if obj is None:
            return None
    return obj


def _set(obj: dict[str, Any], path: Path, value: Any) -> None:
    """Set a field below maps only (`f:` steps), creating the maps on the way."""
    for step in path[:-1]:
        obj = obj.setdefault(step[2:], {})
    obj[path[-1][2:]] = value


def _remove(obj: Any, path: Path) -> None:
    """Remove the field at `path`, and the maps and list items that only it kept."""
    parents = [obj]
    for step in path[:-1]:
        parents.append(_child(parents[-1], step))
        if parents[-1] is None:
            return
    for depth in range(len(path) - 1, -1, -1):
        container, step = parents[depth], path[depth]
        if step.startswith("f:") and isinstance(container, dict):
            container.pop(step[2:], None)
        elif step.startswith("k:") and isinstance(container, list):
            item = _child(container, step)
            if item is not None:
                container.remove(item)
        if depth == 0 or container:  # keep a parent that still holds something
            return


def _merge(live: Any, applied: Any, name: str = "") -> Any:
    """`applied` merged over `live` as a server-side apply does (maps by key, keyed lists by item)."""
    if isinstance(live, Mapping) and isinstance(applied, Mapping):
        merged = dict(live)
        for key, value in applied.items():
            merged[key] = _merge(live.get(key), value, str(key))
        return merged
    if isinstance(live, list) and isinstance(applied, list) and (key := _merge_key(name, applied)):
        by_key = {json.dumps(item.get(key)): item for item in applied}
        merged_items = []
        for item in live:
            wanted = by_key.pop(json.dumps(item.get(key)) if isinstance(item, Mapping) else "", None)
            merged_items.append(item if wanted is None else _merge(item, wanted))
        return merged_items + list(by_key.values())
    return copy.deepcopy(applied)


def fields_v1(paths: Collection[Path]) -> dict[str, Any]:
    """Leaf paths as a managedFields `fieldsV1` tree."""
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        for step in path:
            node = node.setdefault(step, {})
    return tree


class FakeCluster:
    """`modeldeploy.kube.Cluster` in memory. `writes` lists the write requests it accepted (a no-op apply
    included: the API server receives it all the same), `refused` those it refused; `reads` counts the
    read requests by plural."""

    def __init__(self, crds: Collection[str] = (), nodes: Sequence[Mapping[str, Any]] = ()) -> None:
        self.crds = set(crds)
        self._nodes = [dict(node) for node in nodes]
        self._objects: dict[Key, _Stored] = {}
        self._events: dict[tuple[str, str], dict[str, Any]] = {}
        self.logs: dict[tuple[str, str, str], str] = {}
        self._revision = 100
        self._refusals: dict[tuple[str, str], tuple[str, int]] = {}
        self.writes: list[Write] = []
        self.refused: list[Write] = []
        self.reads: Counter[str] = Counter()

    # ------------------------------------------------------------------------------------ test controls

    def reject(self, kind: Kind, name: str, message: str, code: int = 422) -> None:
        """Refuse every apply of this object from now on, as the API server does with `code` (422: an
        invalid object, 403: forbidden, 5xx: transient)."""
        self._refusals[(kind.kind, name)] = (message, code)

    def accept(self, kind: Kind, name: str) -> None:
        self._refusals.pop((kind.kind, name), None)

    def create_model_deployment(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Create, or update the spec of, a ModelDeployment (as `kubectl apply` does); its current body."""
        manifest = {
            "apiVersion": MODEL_DEPLOYMENT.api_version,
            "kind": MODEL_DEPLOYMENT.kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": copy.deepcopy(dict(spec)),
        }
        self._apply(manifest, "kubectl", force=False)
        return self.body(MODEL_DEPLOYMENT, namespace, name)

    def create(self, manifest: Mapping[str, Any], manager: str = "kubectl") -> dict[str, Any]:
        """Someone else's object (an apply by another field manager, without force)."""
        return self._apply(manifest, manager, force=False)

    def edit(
        self, kind: Kind, namespace: str, name: str, changes: Mapping[str, Any], manager: str = "kubectl-edit"
    ) -> dict[str, Any]:
        """A hand edit (an update by another manager): `changes` merged in, its fields now that manager's."""
        stored = self._stored(kind, namespace, name)
        if stored is None:
            raise KeyError(f"{kind} {namespace}/{name}")
        self.writes.append(Write("update", kind.kind, namespace, name, manager))
        edited = _merge(copy.deepcopy(stored.obj), changes)
        # An update owns what it changed, and takes it from whoever owned it before.
        paths = {
            path
            for path in leaf_fields(dict(changes))
            if value_at(stored.obj, path) != value_at(edited, path)
        }
        for _, owned in stored.managers.values():
            owned.difference_update(paths)
        _, mine = stored.managers.get(manager, ("Update", set()))
        stored.managers[manager] = ("Update", mine | paths)
        self._commit(stored, edited)
        return self._rendered(stored)

    def set_status(self, kind: Kind, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """What a controller (Deployment, Job, the claim binder) writes into an object's status."""
        stored = self._stored(kind, namespace, name)
        if stored is None:
            raise KeyError(f"{kind} {namespace}/{name}")
        self._commit(stored, {**stored.obj, "status": copy.deepcopy(dict(status))})

    def body(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        stored = self._stored(kind, namespace, name)
        if stored is None:
            raise KeyError(f"{kind} {namespace}/{name}")
        return self._rendered(stored)

    def exists(self, kind: Kind, namespace: str, name: str) -> bool:
        return self._stored(kind, namespace, name) is not None

    def names(self, kind: Kind, namespace: str) -> list[str]:
        return sorted(name for (k, ns, name) in self._objects if k == kind and ns == namespace)

    def owners_of(self, kind: Kind, namespace: str, name: str, path: Path) -> set[str]:
        """The field managers that own the field at `path`."""
        stored = self._stored(kind, namespace, name)
        if stored is None:
            return set()
        return {manager for manager, (_, owned) in stored.managers.items() if path in owned}

    def delete_now(self, kind: Kind, namespace: str, name: str) -> None:
        """A hand deletion (`kubectl delete`), not counted as the reconciler's write."""
        self._remove_object((kind, namespace, name))

    @property
    def events(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(event) for event in self._events.values()]

    # ------------------------------------------------------------------------------------ Cluster

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads[kind.plural] += 1
        self._known(kind, f"get {kind} {namespace}/{name}")
        stored = self._stored(kind, namespace, name)
        return None if stored is None else self._rendered(stored)

    async def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        self.reads[kind.plural] += 1
        self._known(kind, f"list {kind} in {namespace}")
        found = []
        for key, stored in sorted(self._objects.items(), key=lambda item: item[0][2]):
            object_labels = (stored.obj.get("metadata") or {}).get("labels") or {}
            if (
                key[0] == kind
                and key[1] == namespace
                and all(object_labels.get(k) == v for k, v in labels.items())
            ):
                found.append(self._rendered(stored))
        return found

    async def apply(self, manifest: Mapping[str, Any], field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        kind = kind_of(manifest)
        metadata = manifest["metadata"]
        write = Write("apply", kind.kind, metadata["namespace"], metadata["name"], field_manager)
        action = f"apply {kind} {metadata['namespace']}/{metadata['name']}"
        refusal = self._refusals.get((kind.kind, metadata["name"]))
        if refusal is not None or (CRD_OF.get(kind, "") not in self.crds and kind in CRD_OF):
            self.refused.append(write)
        self._known(kind, action)
        if refusal is not None:
            message, code = refusal
            raise KubeError(f"{action}: {message}", code, code in TRANSIENT_CODES)
        self.writes.append(write)
        return self._apply(manifest, field_manager, force=True)

    async def delete(self, kind: Kind, namespace: str, name: str) -> None:
        self.writes.append(Write("delete", kind.kind, namespace, name))
        self._remove_object((kind, namespace, name))

    async def apply_status(
        self, namespace: str, name: str, status: Mapping[str, Any], kind: Kind = MODEL_DEPLOYMENT
    ) -> str | None:
        self.writes.append(Write("status", kind.kind, namespace, name))
        stored = self._stored(kind, namespace, name)
        if stored is None:
            return None
        # The status subresource: our manager owns all of it, so an apply replaces it.
        self._commit(stored, {**stored.obj, "status": copy.deepcopy(dict(status))})
        return str(stored.obj["metadata"]["resourceVersion"])

    async def create_event(self, event: Mapping[str, Any]) -> None:
        metadata = event["metadata"]
        self.writes.append(Write("create", "Event", metadata["namespace"], metadata["name"]))
        self._events[(metadata["namespace"], metadata["name"])] = copy.deepcopy(dict(event))

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> bool:
        self.writes.append(Write("patch", "Event", namespace, name))
        event = self._events.get((namespace, name))
        if event is None:
            return False
        event.update(copy.deepcopy(dict(patch)))
        return True

    async def events_for(self, namespace: str, kind: str, name: str) -> Objects:
        self.reads["events"] += 1
        found = [
            copy.deepcopy(event)
            for (ns, _), event in self._events.items()
            if ns == namespace
            and event["involvedObject"]["kind"] == kind
            and event["involvedObject"]["name"] == name
        ]
        return sorted(found, key=lambda event: str(event.get("lastTimestamp") or ""))

    async def nodes(self) -> Objects:
        self.reads["nodes"] += 1
        return copy.deepcopy(self._nodes)

    async def crd_exists(self, name: str) -> bool:
        self.reads["customresourcedefinitions"] += 1
        return name in self.crds

    async def container_log(self, namespace: str, pod: str, container: str, tail_lines: int) -> str:
        """What `logs[(namespace, pod, container)]` holds (a test writes it; nothing runs here)."""
        self.reads["pods/log"] += 1
        if (namespace, pod, container) not in self.logs:
            raise KubeError(f"container {container} in pod {namespace}/{pod} has no log", 400, False)
        return "".join(self.logs[(namespace, pod, container)].splitlines(keepends=True)[-tail_lines:])

    # ------------------------------------------------------------------------------------ the store

    def _known(self, kind: Kind, action: str) -> None:
        """A kind whose CRD is not installed does not exist for the API server."""
        crd = CRD_OF.get(kind)
        if crd is not None and crd not in self.crds:
            raise KubeError(f"{action}: the server could not find the requested resource", 404, False)

    def _stored(self, kind: Kind, namespace: str, name: str) -> _Stored | None:
        return self._objects.get((kind, namespace, name))

    def _apply(
        self,
        manifest: Mapping[str, Any],
        manager: str,
        force: bool,
    ) -> dict[str, Any]:
        kind = kind_of(manifest)
        metadata = manifest["metadata"]
        key: Key = (kind, metadata["namespace"], metadata["name"])
        stored = self._objects.get(key)
        if stored is None:
            stored = self._objects[key] = _Stored({})
        live = stored.obj
        applied = set(leaf_fields(dict(manifest))) - UNOWNED
        _, previously = stored.managers.get(manager, ("Apply", set()))
        # On a copy: removing fields below must not touch the stored object (compared with it after).
        merged = _merge(copy.deepcopy(live), manifest)
        for path in applied:
            for other, (_, owned) in stored.managers.items():
                if other != manager and path in owned and value_at(live, path) != value_at(merged, path):
                    if not force:
                        raise KubeError(f"apply {kind} {metadata['name']}: conflict with {other}", 409, True)
                    owned.discard(path)
        stored.managers[manager] = ("Apply", applied)
        still_owned = set().union(*(owned for _, owned in stored.managers.values()))
        for path in previously - applied - still_owned:
            _remove(merged, path)
        for path, default in DEFAULTS.get(kind, {}).items():
            if value_at(merged, path) is None:
                _set(merged, path, default)
        stored.managers = {m: entry for m, entry in stored.managers.items() if entry[1]}
        self._commit(stored, merged)
        return self._rendered(stored)

    def _commit(self, stored: _Stored, new: dict[str, Any]) -> None:
        """Store `new` (and the ownership already recorded), bumping versions only if anything changed."""
        old, new = stored.obj, copy.deepcopy(new)
        metadata = new.setdefault("metadata", {})
        stored.managers = {m: entry for m, entry in stored.managers.items() if entry[1]}
        managed = self._managed_fields(stored.managers, str(new.get("apiVersion", "")))
        if old and _without_versions(old) == _without_versions(new) and stored.managed_fields == managed:
            return
        self._revision += 1
        metadata["resourceVersion"] = str(self._revision)
        metadata.setdefault("uid", str(uuid.uuid4()))
        generation = int((old.get("metadata") or {}).get("generation") or 0)
        if not old or _content(old) != _content(new):
            generation += 1
        metadata["generation"] = generation
        stored.obj, stored.managed_fields = new, managed

    @staticmethod
    def _managed_fields(managers: Mapping[str, tuple[str, set[Path]]], api_version: str) -> Objects:
        return [
            {
                "manager": manager,
                "operation": operation,
                "apiVersion": api_version,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_v1(owned),
            }
            for manager, (operation, owned) in sorted(managers.items())
        ]

    @staticmethod
    def _rendered(stored: _Stored) -> dict[str, Any]:
        """The object as the API server returns it (managedFields included)."""
        obj = copy.deepcopy(stored.obj)
        obj["metadata"]["managedFields"] = copy.deepcopy(stored.managed_fields)
        return obj

    def _remove_object(self, key: Key) -> None:
        stored = self._objects.pop(key, None)
        if stored is None:
            return
        uid = stored.obj["metadata"]["uid"]
        # Background cascading deletion: the garbage collector takes the dependents.
        for other, child in list(self._objects.items()):
            references = child.obj["metadata"].get("ownerReferences") or []
            if other[1] == key[1] and any(reference.get("uid") == uid for reference in references):
                self._remove_object(other)


def _without_versions(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = {
        k: v for k, v in (obj.get("metadata") or {}).items() if k not in {"resourceVersion", "generation"}
    }
    return {**obj, "metadata": metadata}


def _content(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What bumps generation: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in {"metadata", "status"}}
