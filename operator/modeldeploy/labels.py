"""Labels, selectors and owner references shared by every child object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modeldeploy.kinds import MODEL_DEPLOYMENT, Kind
from modeldeploy.names import ChildNames, label_value, truncated_label_value

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "modeldeploy"
NAME_LABEL = "modeldeploy.dev/name"
COMPONENT = "app.kubernetes.io/component"
INFERENCE_SERVER = "inference-server"
# The model builder: the component label of its objects, and the name of its container (the status finds
# the builder's outcome on a pod by it).
MODEL_BUILDER = "model-builder"
# The NVIDIA device plugin's extended resource, and GPU Feature Discovery's node label naming the GPU.
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

# On the pod template: a change here (and only here) rolls the pods for a new model repository.
MODEL_DIGEST_ANNOTATION = "modeldeploy.dev/model-digest"
# On every child: the hash of the manifest last applied, so a changed manifest is re-applied even when
# it only *removes* fields (which a subset comparison against the live object cannot notice).
APPLIED_HASH_ANNOTATION = "modeldeploy.dev/applied-hash"


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment a child belongs to. `uid` is None when rendering offline."""

    name: str
    namespace: str
    uid: str | None

    @property
    def names(self) -> ChildNames:
        return ChildNames(self.name)


def standard_labels(owner: Owner, component: str = INFERENCE_SERVER) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "triton",
        "app.kubernetes.io/instance": truncated_label_value(owner.name),
        COMPONENT: component,
        "app.kubernetes.io/part-of": "modeldeploy",
        MANAGED_BY: MANAGED_BY_VALUE,
        NAME_LABEL: label_value(owner.name),
    }


def selector_labels(owner: Owner) -> dict[str, str]:
    """The Triton pods' selector. Immutable on a Deployment, so it never includes anything that changes."""
    return {NAME_LABEL: label_value(owner.name), COMPONENT: INFERENCE_SERVER}


def selector_string(owner: Owner) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(owner).items()))


def owner_references(owner: Owner) -> list[dict[str, Any]]:
    if owner.uid is None:
        # Offline rendering: a made-up uid would make the garbage collector delete the objects at once.
        return []
    # No blockOwnerDeletion: it would need update on modeldeployments/finalizers, which the operator's
    # role deliberately lacks; background garbage collection still removes every child.
    return [{**MODEL_DEPLOYMENT.reference(owner.name), "uid": owner.uid, "controller": True}]


def object_meta(owner: Owner, name: str, component: str = INFERENCE_SERVER) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": standard_labels(owner, component),
    }
    references = owner_references(owner)
    if references:
        meta["ownerReferences"] = references
    return meta


def child_manifest(
    kind: Kind,
    owner: Owner,
    name: str,
    spec: dict[str, Any],
    component: str = INFERENCE_SERVER,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A child object of `owner`, as every builder returns it: the labels and owner reference that all
    children carry, around the builder's own `spec`."""
    metadata = object_meta(owner, name, component)
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": metadata, "spec": spec}


def is_owned_by(obj: dict[str, Any], uid: str) -> bool:
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(reference.get("uid") == uid for reference in references)
