"""The Triton Deployment."""

from __future__ import annotations

import copy
from typing import Any

from model_repo.triton import triton_server_args
from modeldeploy.api import ModelDeployment
from modeldeploy.digest import repository_digest
from modeldeploy.kinds import DEPLOYMENT
from modeldeploy.labels import MODEL_DIGEST_ANNOTATION, child_manifest, selector_labels, standard_labels
from modeldeploy.manifests.common import (
    builder_container,
    builder_volumes,
    container_resources,
    container_security_context,
    owner_of,
    placement,
    pod_security_context,
)
from modeldeploy.settings import RenderSettings

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
EXIT_TIMEOUT_SECONDS = 30
# Room for Triton's own exit timeout plus the Python stubs shutting down after it.
TERMINATION_GRACE_SECONDS = EXIT_TIMEOUT_SECONDS + 30
STARTUP_PERIOD_SECONDS = 10
# Triton answers /v2/health/live only after loading every model: allow 30 minutes for big checkpoints.
STARTUP_FAILURE_THRESHOLD = 180
PROGRESS_DEADLINE_SECONDS = STARTUP_PERIOD_SECONDS * STARTUP_FAILURE_THRESHOLD + 600
# How much /dev/shm the pod gets per model instance (each Python-backend stub's shared-memory region)
# on top of a base for the server itself.
SHM_MIB_PER_INSTANCE = 256
SHM_BASE_MIB = 256

# The OpenAI sidecar: an asyncio process holding a tokenizer, no model weights.
OPENAI_CONTAINER = "openai"
OPENAI_PORT_NAME = "openai"
OPENAI_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"memory": "2Gi"},
}

SHM_VOLUME = "dshm"
REPOSITORY_VOLUME = "model-repository"
REPOSITORY_MOUNT = "/models"
CACHE_VOLUME = "model-cache"
CACHE_MOUNT = "/cache"


def repository_path(md: ModelDeployment, digest: str) -> str:
    """Where Triton reads the repository: the shared emptyDir, or the digest's directory in the cache."""
    if md.spec.cache is not None:
        return f"{CACHE_MOUNT}/{digest}"
    return f"{REPOSITORY_MOUNT}/repository"


def shm_size_mib(md: ModelDeployment) -> int:
    devices = max(md.spec.resources.gpus, 1)
    return SHM_BASE_MIB + SHM_MIB_PER_INSTANCE * md.spec.triton.instances_per_device * devices


def triton_arguments(md: ModelDeployment, digest: str) -> list[str]:
    return [
        f"--model-repository={repository_path(md, digest)}",
        "--strict-readiness=true",
        f"--exit-timeout-secs={EXIT_TIMEOUT_SECONDS}",
        "--allow-metrics=true",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        *triton_server_args(response_cache=md.spec.triton.response_cache),
    ]


def _probe(path: str, period: int, failures: int, port: str = "http") -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _repository_mount(md: ModelDeployment) -> dict[str, Any]:
    if md.spec.cache is not None:
        return {"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT, "readOnly": True}
    return {"name": REPOSITORY_VOLUME, "mountPath": REPOSITORY_MOUNT, "readOnly": True}


def triton_container(md: ModelDeployment, settings: RenderSettings, digest: str) -> dict[str, Any]:
    repository_mount = _repository_mount(md)
    return {
        "name": "triton",
        "image": md.spec.triton.image or settings.triton_image,
        "command": ["tritonserver"],
        "args": triton_arguments(md, digest),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "startupProbe": _probe("/v2/health/live", STARTUP_PERIOD_SECONDS, STARTUP_FAILURE_THRESHOLD),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "resources": container_resources(md.spec, with_gpus=True),
        "volumeMounts": [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}, repository_mount],
        "securityContext": container_security_context(),
        # Triton writes no termination message; its last log lines ("failed to load model ...") are what
        # the status quotes when it exits (ModelLoadFailed).
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def openai_container(md: ModelDeployment, settings: RenderSettings, digest: str) -> dict[str, Any]:
    """The API sidecar (model_repo/openai_frontend, in the Triton image) serving the enabled route groups
    of spec.api: it reads the tokenizer from the same repository and calls Triton over gRPC on localhost."""
    routes = md.spec.api_routes
    assert routes
    port = md.spec.api_port
    return {
        "name": OPENAI_CONTAINER,
        "image": md.spec.triton.image or settings.triton_image,
        "command": ["python3", "-m", "openai_frontend"],
        "args": [
            f"--model-repository={repository_path(md, digest)}",
            f"--model-id={md.metadata.name}",
            f"--triton-grpc=127.0.0.1:{GRPC_PORT}",
            "--host=0.0.0.0",
            f"--port={port}",
            f"--routes={','.join(routes)}",
        ],
        # Only the tokenizer is read from the repository; nothing may be fetched from the hub.
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "HF_HOME", "value": "/tmp/hf-home"}],
        "ports": [{"name": OPENAI_PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        # Ready exactly when Triton and the model are (the sidecar asks Triton over gRPC), so the pod's
        # readiness is Triton's whether or not the API is on.
        "startupProbe": _probe("/health/live", 2, 60, OPENAI_PORT_NAME),
        "livenessProbe": _probe("/health/live", 10, 3, OPENAI_PORT_NAME),
        "readinessProbe": _probe("/health/ready", 5, 3, OPENAI_PORT_NAME),
        "resources": copy.deepcopy(OPENAI_RESOURCES),
        "volumeMounts": [_repository_mount(md)],
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def build_deployment(md: ModelDeployment, settings: RenderSettings) -> dict[str, Any]:
    owner = owner_of(md)
    names = owner.names
    digest = repository_digest(md.spec, md.metadata.name)
    volumes: list[dict[str, Any]] = [
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_size_mib(md)}Mi"}},
    ]
    pod_spec: dict[str, Any] = {}
    if md.spec.cache is not None:
        claim = md.spec.cache.claim_name or names.cache_claim
        # Read-only: only the build Job writes the cache; a pod can never corrupt it.
        volumes.append(
            {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
    else:
        volumes.append({"name": REPOSITORY_VOLUME, "emptyDir": {}})
        volumes.extend(builder_volumes(md.spec))
        pod_spec["initContainers"] = [
            builder_container(
                md.spec,
                settings.builder_image,
                names.model_name,
                f"{REPOSITORY_MOUNT}/repository",
                {"name": REPOSITORY_VOLUME, "mountPath": REPOSITORY_MOUNT},
            )
        ]
    pod_spec.update(
        {
            "containers": [
                triton_container(md, settings, digest),
                *([openai_container(md, settings, digest)] if md.spec.api_routes else []),
            ],
            "volumes": volumes,
            "securityContext": pod_security_context(),
            "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            **placement(md.spec, with_gpus=True),
        }
    )
    spec: dict[str, Any] = {}
    if md.spec.autoscaling is None:
        # With an autoscaler the replica count is its field; leaving it out keeps the two from fighting.
        spec["replicas"] = md.spec.replicas
    spec |= {
        "selector": {"matchLabels": selector_labels(owner)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
        "template": {
            "metadata": {
                "labels": standard_labels(owner),
                "annotations": {MODEL_DIGEST_ANNOTATION: digest},
            },
            "spec": pod_spec,
        },
    }
    return child_manifest(DEPLOYMENT, owner, names.deployment, spec)
