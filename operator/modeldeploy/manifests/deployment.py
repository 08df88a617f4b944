"""The Triton Deployment."""

from __future__ import annotations

import copy
from typing import Any

from model_repo.openai_frontend.token_arrays import TokenArrays
from model_repo.options import device_batching
from model_repo.triton_args import LOOPBACK, loopback_server_args, triton_server_args
from modeldeploy.api import RESTRICTED_API_HEADER, ModelDeployment, RolloutStrategy
from modeldeploy.digest import device, repository_digest
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
    triton_environment,
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

# The sidecar's API keys: the Secret of spec.api.auth, mounted (a change reaches the files without a restart).
API_KEYS_VOLUME = "api-keys"
API_KEYS_MOUNT = "/etc/modeldeploy/api-keys"
API_KEYS_MODE = 0o440  # read by the containers' group (fsGroup), no one else

# Triton's administrative APIs, which nothing outside the container may call: model control and the
# repository index, shared-memory registration, trace and log settings. tritonserver can only restrict
# an API to requests carrying a header value; the container draws that value at random when it starts and
# keeps it to itself. (`$$(` is how a container command spells a literal `$(` past Kubernetes' expansion.)
RESTRICTED_APIS = "model-repository,shared-memory,trace,logging"
TRITON_LAUNCHER = (
    "restricted=$$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n') && "
    'exec tritonserver "$@" '
    f"--http-restricted-api={RESTRICTED_APIS}:{RESTRICTED_API_HEADER}=$restricted "
    f"--grpc-restricted-protocol={RESTRICTED_APIS}:{RESTRICTED_API_HEADER}=$restricted"
)

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
    instances = md.spec.triton.instances_per_device or device_batching(device(md.spec)).instances_per_device
    return SHM_BASE_MIB + SHM_MIB_PER_INSTANCE * instances * devices


def triton_arguments(md: ModelDeployment, digest: str) -> list[str]:
    """tritonserver's flags (after the launcher's command); on loopback unless spec.api exposes it."""
    listen = [] if md.spec.triton_exposed else loopback_server_args()
    return [
        f"--model-repository={repository_path(md, digest)}",
        "--strict-readiness=true",
        f"--exit-timeout-secs={EXIT_TIMEOUT_SECONDS}",
        "--allow-metrics=true",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        *listen,
        *triton_server_args(response_cache=md.spec.triton.response_cache),
    ]


def _probe(path: str, period: int, failures: int, port: str = "http") -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _loopback_probe(path: str, period: int, failures: int) -> dict[str, Any]:
    """A probe of Triton on the pod's loopback (the kubelet's own HTTP probes reach only the pod's
    address), run by the image's Python: a non-2xx answer or no answer fails it."""
    check = f"import urllib.request; urllib.request.urlopen('http://{LOOPBACK}:{HTTP_PORT}{path}', timeout=4)"
    return {
        "exec": {"command": ["python3", "-c", check]},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _triton_probes(md: ModelDeployment) -> dict[str, Any]:
    probe = _probe if md.spec.triton_exposed else _loopback_probe
    return {
        "startupProbe": probe("/v2/health/live", STARTUP_PERIOD_SECONDS, STARTUP_FAILURE_THRESHOLD),
        "livenessProbe": probe("/v2/health/live", 10, 3),
        "readinessProbe": probe("/v2/health/ready", 5, 3),
    }


def _repository_mount(md: ModelDeployment) -> dict[str, Any]:
    if md.spec.cache is not None:
        return {"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT, "readOnly": True}
    return {"name": REPOSITORY_VOLUME, "mountPath": REPOSITORY_MOUNT, "readOnly": True}


def triton_container(md: ModelDeployment, settings: RenderSettings, digest: str) -> dict[str, Any]:
    repository_mount = _repository_mount(md)
    serving_ports = [
        {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
        {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
    ]
    return {
        "name": "triton",
        "image": md.spec.triton.image or settings.triton_image,
        "command": ["/bin/sh", "-c", TRITON_LAUNCHER, "tritonserver"],
        "args": triton_arguments(md, digest),
        "ports": [
            *(serving_ports if md.spec.triton_exposed else []),
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        **_triton_probes(md),
        **triton_environment(md.spec.triton.cpu_wait_policy),
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
    auth = md.spec.api.auth if md.spec.api is not None else None
    keys = [f"--api-keys-dir={API_KEYS_MOUNT}"] if auth is not None else []
    keys_mount = [{"name": API_KEYS_VOLUME, "mountPath": API_KEYS_MOUNT, "readOnly": True}] if auth else []
    # Written only when not the default (the sidecar's too): an operator upgrade leaves existing pods alone.
    openai = md.spec.openai
    token_arrays = (
        [f"--token-arrays={openai.token_arrays.value}"]
        if openai is not None and openai.token_arrays is not TokenArrays.MODEL
        else []
    )
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
            *keys,
            *token_arrays,
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
        "volumeMounts": [_repository_mount(md), *keys_mount],
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def pod_replacement(md: ModelDeployment) -> dict[str, Any]:
    """The Deployment's strategy: Recreate only when asked; a canary's promotion rolls pod by pod too."""
    rollout = md.spec.rollout
    if rollout is not None and rollout.strategy is RolloutStrategy.RECREATE:
        return {"type": "Recreate"}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def build_deployment(
    md: ModelDeployment, settings: RenderSettings, calibration_sha256: str | None = None
) -> dict[str, Any]:
    owner = owner_of(md)
    names = owner.names
    digest = repository_digest(md.spec, md.metadata.name, calibration_sha256)
    volumes: list[dict[str, Any]] = [
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_size_mib(md)}Mi"}},
    ]
    pod_spec: dict[str, Any] = {}
    auth = md.spec.api.auth if md.spec.api is not None and md.spec.api_routes else None
    if auth is not None:
        # Not optional: without its Secret the pod waits rather than serve with no keys.
        volumes.append(
            {
                "name": API_KEYS_VOLUME,
                "secret": {"secretName": auth.secret_name, "defaultMode": API_KEYS_MODE},
            }
        )
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
        "strategy": pod_replacement(md),
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
