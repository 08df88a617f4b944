"""The children of a ModelServer: its model list (ConfigMap), its Triton Deployment (tritonserver in
explicit model-control mode beside the agent container that loads the listed models), Service and PDB.

The pods never write the cache: it is mounted read-only into both containers. The agent links the listed
repositories into a pod-local emptyDir that Triton serves (model_repo.model_set) and drives Triton's
repository API on localhost, so it needs no Kubernetes credentials at all (no service account token).
"""

from __future__ import annotations

import copy
import json
from typing import Any, cast

from model_repo.model_set import DESIRED_FILE
from model_repo.triton_args import triton_server_args
from modeldeploy.api import ModelDeploymentSpec
from modeldeploy.kinds import CONFIG_MAP, DEPLOYMENT, MODEL_SERVER, POD_DISRUPTION_BUDGET, SERVICE
from modeldeploy.labels import COMPONENT, INFERENCE_SERVER, MANAGED_BY, MANAGED_BY_VALUE
from modeldeploy.manifests.common import (
    container_resources,
    container_security_context,
    placement,
    pod_security_context,
    triton_environment,
)
from modeldeploy.manifests.deployment import (
    CACHE_MOUNT,
    EXIT_TIMEOUT_SECONDS,
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    SHM_BASE_MIB,
    SHM_MIB_PER_INSTANCE,
    TERMINATION_GRACE_SECONDS,
)
from modeldeploy.names import dns_label, label_value
from modeldeploy.server_api import ModelServer
from modeldeploy.settings import RenderSettings

SERVER_LABEL = "modeldeploy.dev/server"
SERVED_MOUNT = "/served"
# The shared runtime's generated model directories (model_repo.model_set.SharedRuntime): written by the
# agent, read by Triton through the links in SERVED_MOUNT, so both containers mount it at this path.
SHARED_RUNTIME_MOUNT = "/served-shared"
DESIRED_MOUNT = "/etc/modeldeploy/models"
AGENT_CONTAINER = "agent"
AGENT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
}
# /dev/shm for a server of many models: room for this many Python-backend stubs' regions.
SHM_STUBS = 16


def config_map_name(server: ModelServer) -> str:
    return dns_label(server.metadata.name, "models")


def service_name(server: ModelServer) -> str:
    return dns_label(server.metadata.name)


def selector(server: ModelServer) -> dict[str, str]:
    return {SERVER_LABEL: label_value(server.metadata.name), COMPONENT: INFERENCE_SERVER}


def _labels(server: ModelServer) -> dict[str, str]:
    return {
        **selector(server),
        "app.kubernetes.io/name": "triton",
        "app.kubernetes.io/part-of": "modeldeploy",
        MANAGED_BY: MANAGED_BY_VALUE,
    }


def _metadata(server: ModelServer, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": server.metadata.namespace, "labels": _labels(server)}
    if server.metadata.uid is not None:
        meta["ownerReferences"] = [
            {**MODEL_SERVER.reference(server.metadata.name), "uid": server.metadata.uid, "controller": True}
        ]
    return meta


def build_model_list(server: ModelServer, desired: dict[str, Any]) -> dict[str, Any]:
    """The ConfigMap the agent reads: {"models": {name: {"repository": <digest directory>}}}."""
    return {
        "apiVersion": CONFIG_MAP.api_version,
        "kind": CONFIG_MAP.kind,
        "metadata": _metadata(server, config_map_name(server)),
        "data": {DESIRED_FILE: json.dumps(desired, sort_keys=True, indent=2) + "\n"},
    }


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures}


def _shared_runtime_args(server: ModelServer) -> list[str]:
    if not server.spec.triton.shared_runtime:
        return []
    kind = "KIND_GPU" if server.spec.resources.gpus >= 1 else "KIND_CPU"
    return [f"--shared-runtime={SHARED_RUNTIME_MOUNT}", f"--host-kind={kind}"]


def _shared_runtime_mounts(server: ModelServer, read_only: bool) -> list[dict[str, Any]]:
    if not server.spec.triton.shared_runtime:
        return []
    mount: dict[str, Any] = {"name": "shared-runtime", "mountPath": SHARED_RUNTIME_MOUNT}
    return [{**mount, "readOnly": True}] if read_only else [mount]


def build_server_deployment(server: ModelServer, settings: RenderSettings) -> dict[str, Any]:
    spec = server.spec
    # The shared helpers read only spec.resources, which both kinds define alike.
    resources_spec = cast(ModelDeploymentSpec, spec)
    cache = {"name": "model-cache", "mountPath": CACHE_MOUNT, "readOnly": True}
    triton = {
        "name": "triton",
        "image": settings.triton_image,
        "command": ["tritonserver"],
        "args": [
            f"--model-repository={SERVED_MOUNT}",
            "--model-control-mode=explicit",
            f"--exit-timeout-secs={EXIT_TIMEOUT_SECONDS}",
            "--allow-metrics=true",
            f"--http-port={HTTP_PORT}",
            f"--grpc-port={GRPC_PORT}",
            f"--metrics-port={METRICS_PORT}",
            *triton_server_args(response_cache=spec.triton.response_cache),
        ],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # Without --strict-readiness a pod is Ready once the server is up: one model failing to load must
        # not take every other model's endpoints away. Each model's state is read per model instead.
        "startupProbe": _probe("/v2/health/live", 10, 60),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        **triton_environment(spec.triton.cpu_wait_policy),
        "resources": container_resources(resources_spec, with_gpus=True),
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            dict(cache),
            {"name": "served", "mountPath": SERVED_MOUNT, "readOnly": True},
            *_shared_runtime_mounts(server, read_only=True),
        ],
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    agent = {
        "name": AGENT_CONTAINER,
        "image": settings.triton_image,
        # model_repo/model_set.py, copied into the Triton image as modeldeploy_agent (Dockerfile).
        "command": ["python3", "-m", "modeldeploy_agent"],
        "args": [
            f"--desired={DESIRED_MOUNT}/{DESIRED_FILE}",
            f"--repositories={CACHE_MOUNT}",
            f"--served={SERVED_MOUNT}",
            f"--triton=127.0.0.1:{HTTP_PORT}",
            f"--interval={spec.triton.agent_interval_seconds}",
            *_shared_runtime_args(server),
        ],
        "resources": copy.deepcopy(AGENT_RESOURCES),
        "volumeMounts": [
            dict(cache),
            {"name": "served", "mountPath": SERVED_MOUNT},
            {"name": "model-list", "mountPath": DESIRED_MOUNT, "readOnly": True},
            *_shared_runtime_mounts(server, read_only=False),
        ],
        "securityContext": {**container_security_context(), "readOnlyRootFilesystem": True},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    shm = SHM_BASE_MIB + SHM_MIB_PER_INSTANCE * SHM_STUBS
    pod_spec = {
        "containers": [triton, agent],
        "volumes": [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm}Mi"}},
            {
                "name": "model-cache",
                "persistentVolumeClaim": {"claimName": spec.cache.claim_name, "readOnly": True},
            },
            {"name": "served", "emptyDir": {"sizeLimit": "16Mi"}},
            {"name": "model-list", "configMap": {"name": config_map_name(server)}},
            *(
                [{"name": "shared-runtime", "emptyDir": {"sizeLimit": "16Mi"}}]
                if server.spec.triton.shared_runtime
                else []
            ),
        ],
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        **placement(resources_spec, with_gpus=True),
    }
    deployment_spec: dict[str, Any] = {}
    if spec.autoscaling is None:
        deployment_spec["replicas"] = spec.replicas
    deployment_spec |= {
        "selector": {"matchLabels": selector(server)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "revisionHistoryLimit": 5,
        "template": {"metadata": {"labels": _labels(server)}, "spec": pod_spec},
    }
    return {
        "apiVersion": DEPLOYMENT.api_version,
        "kind": DEPLOYMENT.kind,
        "metadata": _metadata(server, dns_label(server.metadata.name)),
        "spec": deployment_spec,
    }


def build_server_service(server: ModelServer) -> dict[str, Any]:
    ports = [
        {"name": name, "port": port, "targetPort": name, "protocol": "TCP", "appProtocol": protocol}
        for name, port, protocol in (
            ("http", HTTP_PORT, "http"),
            ("grpc", GRPC_PORT, "kubernetes.io/h2c"),
            ("metrics", METRICS_PORT, "http"),
        )
    ]
    return {
        "apiVersion": SERVICE.api_version,
        "kind": SERVICE.kind,
        "metadata": _metadata(server, service_name(server)),
        "spec": {"type": "ClusterIP", "selector": selector(server), "ports": ports},
    }


def wants_server_pod_disruption_budget(server: ModelServer) -> bool:
    autoscaling = server.spec.autoscaling
    return (autoscaling.max_replicas if autoscaling is not None else server.spec.replicas) > 1


def build_server_pod_disruption_budget(server: ModelServer) -> dict[str, Any]:
    return {
        "apiVersion": POD_DISRUPTION_BUDGET.api_version,
        "kind": POD_DISRUPTION_BUDGET.kind,
        "metadata": _metadata(server, dns_label(server.metadata.name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(server)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def model_endpoint(server: ModelServer, model: str) -> dict[str, str]:
    """Where a placed model answers: the server's Service plus the model's name."""
    host = f"{service_name(server)}.{server.metadata.namespace}.svc"
    return {
        "http": f"http://{host}:{HTTP_PORT}/v2/models/{model}",
        "grpc": f"{host}:{GRPC_PORT}",
        "metrics": f"http://{host}:{METRICS_PORT}/metrics",
        "modelName": model,
    }
