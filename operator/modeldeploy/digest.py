"""The digest of a model repository's inputs.

It names the cache directory and build Job, and sits on the pod template as an annotation, so a change
of anything that shapes the generated repository rolls the pods, and nothing else does: the Triton image,
spec.triton.cpuWaitPolicy, resources, replicas or autoscaling are deliberately left out. Computed from the
parsed spec, so spelling a default out explicitly does not change it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from model_repo.options import device_batching
from modeldeploy.api import ModelDeploymentSpec
from modeldeploy.names import ChildNames

# Bump when the meaning of the inputs changes, to force a rebuild everywhere.
DIGEST_SCHEMA = 1
DIGEST_LENGTH = 16


def device(spec: ModelDeploymentSpec) -> str:
    return "gpu" if spec.resources.gpus > 0 else "cpu"


def repository_inputs(
    spec: ModelDeploymentSpec, md_name: str, calibration_sha256: str | None = None
) -> dict[str, Any]:
    """`calibration_sha256`: the content of spec.triton.calibration's ConfigMap key (the reconciler reads
    it), so that editing the texts rebuilds; None where it is not known (no such key, or `render`)."""
    triton = spec.triton.dump()
    triton.pop("image", None)
    # How the server's threads wait is the pods' environment, not the repository's.
    triton.pop("cpuWaitPolicy", None)
    # Unset batching is the device's default: spelt out or not, the same repository (and, on a CPU, the
    # digest every deployment had before the defaults became per device).
    defaults = device_batching(device(spec))
    triton.setdefault("maxBatchSize", defaults.max_batch_size)
    triton.setdefault("instancesPerDevice", defaults.instances_per_device)
    inputs: dict[str, Any] = {
        "schema": DIGEST_SCHEMA,
        "source": spec.model.source,
        "revision": spec.model.revision,
        "task": spec.model.task.value if spec.model.task else None,
        "trustRemoteCode": spec.model.trust_remote_code,
        "modelName": ChildNames(md_name).model_name,
        "device": device(spec),
        "triton": triton,
    }
    # Only when set, so that every existing deployment keeps its digest (and its pods) on upgrade; turning
    # it on must change the digest, or the failed build Job of the refused build would stand for it.
    if spec.model.allow_new_head:
        inputs["allowNewHead"] = True
    if spec.triton.calibration is not None and calibration_sha256 is not None:
        inputs["calibrationSha256"] = calibration_sha256
    # The builder's stall timeout is one of its arguments, and a build Job (named by the digest) cannot be
    # changed in place: a new value is a new build. Only when set, as above.
    if spec.model.download_stall_seconds is not None:
        inputs["downloadStallSeconds"] = spec.model.download_stall_seconds
    return inputs


def repository_digest(spec: ModelDeploymentSpec, md_name: str, calibration_sha256: str | None = None) -> str:
    inputs = repository_inputs(spec, md_name, calibration_sha256)
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:DIGEST_LENGTH]
