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
    extra_ports = []
    if md.spec.api_routes:
        extra_ports.append(
            {
                "name": OPENAI_PORT_NAME,
                "port": md.spec.api_port,
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
    api = f"http://{host}:{md.spec.api_port}"
    routes = md.spec.api_routes
    if "openai" in routes:
        # What OpenAI(base_url=...) takes; the model id is the ModelDeployment's name.
        found["openai"] = f"{api}/v1"
    if "rerank" in routes:
        found["rerank"] = api  # cohere.ClientV2(base_url=...) appends /v2/rerank itself
    if "classify" in routes:
        found["classify"] = f"{api}/v1/classify"
    if "tei" in routes:
        found["tei"] = api
    return found
