"""The calibration texts a spec names (spec.triton.calibration: a key of a ConfigMap), as the repository's
digest counts them (modeldeploy.digest.repository_inputs)."""

from __future__ import annotations

import base64
import hashlib
import logging

from modeldeploy.api import ModelDeployment
from modeldeploy.kinds import CONFIG_MAP
from modeldeploy.kube import Cluster, KubeError

logger = logging.getLogger(__name__)


async def calibration_sha256(cluster: Cluster, md: ModelDeployment) -> str | None:
    """The sha256 of spec.triton.calibration's texts, so that editing them rebuilds; None when there is no
    such key to read (the build then reports it) or reading ConfigMaps is forbidden (an operator installed
    before this rule). Any other failure to read is raised: a digest without the texts would roll the pods
    back and forth."""
    calibration = md.spec.triton.calibration
    if calibration is None:
        return None
    try:
        found = await cluster.get(CONFIG_MAP, md.metadata.namespace, calibration.config_map_name)
    except KubeError as exc:
        if exc.code != 403:
            raise
        logger.warning("cannot read ConfigMap %s: %s", calibration.config_map_name, exc)
        return None
    found = found or {}
    if calibration.key in (found.get("data") or {}):
        content = str(found["data"][calibration.key]).encode()
    elif calibration.key in (found.get("binaryData") or {}):
        content = base64.b64decode(found["binaryData"][calibration.key])
    else:
        return None
    return hashlib.sha256(content).hexdigest()
