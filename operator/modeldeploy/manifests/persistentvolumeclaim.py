"""The model-cache PersistentVolumeClaim (spec.cache.size)."""

from __future__ import annotations

from typing import Any

from modeldeploy.api import ModelDeployment
from modeldeploy.kinds import PERSISTENT_VOLUME_CLAIM
from modeldeploy.labels import MODEL_BUILDER, child_manifest
from modeldeploy.manifests.common import owner_of

# The build Job writes and pods on any node read: one volume shared across nodes.
CACHE_ACCESS_MODES = ["ReadWriteMany"]


def wants_cache_claim(md: ModelDeployment) -> bool:
    return md.spec.cache is not None and md.spec.cache.size is not None


def build_cache_claim(md: ModelDeployment) -> dict[str, Any]:
    cache = md.spec.cache
    if cache is None or cache.size is None:
        raise ValueError("build_cache_claim needs spec.cache.size")
    owner = owner_of(md)
    spec: dict[str, Any] = {
        "accessModes": list(CACHE_ACCESS_MODES),
        "resources": {"requests": {"storage": str(cache.size)}},
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    return child_manifest(PERSISTENT_VOLUME_CLAIM, owner, owner.names.cache_claim, spec, MODEL_BUILDER)
