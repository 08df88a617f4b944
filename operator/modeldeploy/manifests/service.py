"""The Service in front of the Triton pods."""

from __future__ import annotations

from typing import Any

from modeldeploy.api import ModelDeployment
from modeldeploy.kinds import SERVICE
from modeldeploy.labels import child_manifest, selector_labels
from modeldeploy.manifests.common import owner_of
from modeldeploy.manifests.deployment import GRPC_PORT, HTTP_PORT, METRICS_PORT, OPENAI_PORT_NAME


def build_service(md: ModelDeployment) -> dict[str, Any]:
    owner = owner_of(md)
    openai = md.spec.openai
    extra_ports = []
    if openai is not None:
        extra_ports.append(
            {
                "name": OPENAI_PORT_NAME,
                "port": openai.port,
                "targetPort": OPENAI_PORT_NAME,
                "protocol": "TCP",
                "appProtocol": "http",
            }
        )
    triton_ports = [
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
    ]
    spec = {
        "type": "ClusterIP",
        "selector": selector_labels(owner),
        "ports": [
            # Triton's own API only where it listens beyond the pod (spec.api.exposeTriton).
            *(triton_ports if md.spec.triton_exposed else []),
            {
                "name": "metrics",
                "port": METRICS_PORT,
                "targetPort": "metrics",
                "protocol": "TCP",
                "appProtocol": "http",
            },
            *extra_ports,
        ],
    }
    return child_manifest(SERVICE, owner, owner.names.service, spec)


def endpoints(md: ModelDeployment) -> dict[str, str]:
    """In-cluster addresses of the model, for the status."""
    owner = owner_of(md)
    host = f"{owner.names.service}.{owner.namespace}.svc"
    found = {
        "metrics": f"http://{host}:{METRICS_PORT}/metrics",
        "modelName": owner.names.model_name,
    }
    if md.spec.triton_exposed:
        found |= {"http": f"http://{host}:{HTTP_PORT}", "grpc": f"{host}:{GRPC_PORT}"}
    if md.spec.openai is not None:
        # What OpenAI(base_url=...) takes; the model id is the ModelDeployment's name.
        found["openai"] = f"http://{host}:{md.spec.openai.port}/v1"
    return found
