"""The build Job that writes a model repository into the cache, once per repository digest."""

from __future__ import annotations

from typing import Any

from modeldeploy.api import ModelDeployment
from modeldeploy.digest import repository_digest
from modeldeploy.kinds import JOB
from modeldeploy.labels import (
    MODEL_BUILDER,
    MODEL_DIGEST_ANNOTATION,
    NAME_LABEL,
    child_manifest,
    standard_labels,
)
from modeldeploy.manifests.common import (
    builder_container,
    builder_volumes,
    owner_of,
    placement,
    pod_security_context,
)
from modeldeploy.manifests.deployment import CACHE_MOUNT, CACHE_VOLUME
from modeldeploy.settings import RenderSettings

BACKOFF_LIMIT = 2


def build_build_job(
    md: ModelDeployment, settings: RenderSettings, calibration_sha256: str | None = None
) -> dict[str, Any]:
    cache = md.spec.cache
    if cache is None:
        raise ValueError("build_build_job needs spec.cache")
    owner = owner_of(md)
    names = owner.names
    digest = repository_digest(md.spec, md.metadata.name, calibration_sha256)
    claim = cache.claim_name or names.cache_claim
    # The builder pods carry no modeldeploy.dev/name label: `-l modeldeploy.dev/name=<md>` finds the
    # serving pods only (as the scale subresource's selector does), never a finished build pod.
    pod_labels = {
        key: value for key, value in standard_labels(owner, MODEL_BUILDER).items() if key != NAME_LABEL
    }
    spec = {
        "backoffLimit": BACKOFF_LIMIT,
        # Kept after success: the finished Job is the record that the cache holds this digest.
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {MODEL_DIGEST_ANNOTATION: digest},
            },
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    builder_container(
                        md.spec,
                        settings.builder_image,
                        names.model_name,
                        f"{CACHE_MOUNT}/{digest}",
                        {"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT},
                    )
                ],
                "volumes": [
                    {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim}},
                    *builder_volumes(md.spec),
                ],
                "securityContext": pod_security_context(),
                "enableServiceLinks": False,
                "automountServiceAccountToken": False,
                **placement(md.spec, with_gpus=False),
            },
        },
    }
    return child_manifest(
        JOB, owner, names.build_job(digest), spec, MODEL_BUILDER, {MODEL_DIGEST_ANNOTATION: digest}
    )
