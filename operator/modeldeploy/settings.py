"""Operator-wide settings that shape the rendered objects (images, Prometheus) and what the cluster offers."""

from __future__ import annotations

from dataclasses import dataclass

from modeldeploy import __version__

FIELD_MANAGER = "modeldeploy"
# Keeps the replica count of a Deployment while its ownership passes from us to an autoscaler.
REPLICAS_HANDOFF_MANAGER = "modeldeploy-replicas-handoff"
ANNOTATION_PREFIX = "modeldeploy.dev"
DEFAULT_TRITON_IMAGE = f"ghcr.io/modeldeploy/triton-runtime:{__version__}"
DEFAULT_BUILDER_IMAGE = f"ghcr.io/modeldeploy/builder:{__version__}"
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"


@dataclass(frozen=True)
class RenderSettings:
    """Inputs of the builders that come from the operator's configuration, not from the spec."""

    triton_image: str = DEFAULT_TRITON_IMAGE
    builder_image: str = DEFAULT_BUILDER_IMAGE
    prometheus_url: str = DEFAULT_PROMETHEUS_URL


@dataclass(frozen=True)
class ClusterCapabilities:
    """Optional APIs found in the cluster (their CRDs exist)."""

    service_monitors: bool = False
    keda: bool = False
    # Gateway API HTTPRoutes (a canary with traffic HTTPRoute).
    gateway_api: bool = False
