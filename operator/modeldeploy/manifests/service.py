"""The Service in front of the Triton pods."""

from __future__ import annotations

from typing import Any

from modeldeploy.api import ModelDeployment
from modeldeploy.kinds import SERVICE
from modeldeploy.labels import child_manifest, selector_labels
from modeldeploy.manifests.common import owner_of
from modeldeploy.manifests.deployment import GRPC_PORT, HTTP_PORT, METRICS_PORT


def build_service(md: ModelDeployment) -> dict[str, Any]:
    owner = owner_of(md)
    spec = {
        "type": "ClusterIP",
        "selector": selector_labels(owner),
        "ports": [
            {
                "name": "http",
                "port": HTTP_PORT,
                "targetPort": "http",
                "protocol": "TCP",
                "appProtocol": "http",
            },
            {
                "name": "grpc",
                "port": GRPC_PORT,
                "targetPort": "grpc",
                "protocol": "TCP",
                "appProtocol": "kubernetes.io/h2c",
            },
            {
                "name": "metrics",
                "port": METRICS_PORT,
                "targetPort": "metrics",
                "protocol": "TCP",
                "appProtocol": "http",
            },
        ],
    }
    return child_manifest(SERVICE, owner, owner.names.service, spec)


def endpoints(md: ModelDeployment) -> dict[str, str]:
    """In-cluster addresses of the model, for the status."""
    owner = owner_of(md)
    host = f"{owner.names.service}.{owner.namespace}.svc"
    return {
        "http": f"http://{host}:{HTTP_PORT}",
        "grpc": f"{host}:{GRPC_PORT}",
        "metrics": f"http://{host}:{METRICS_PORT}/metrics",
        "modelName": owner.names.model_name,
    }
