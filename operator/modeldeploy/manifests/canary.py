"""The canary's children: a second Deployment serving the spec's new repository beside the stable one,
and, with traffic HTTPRoute, its own Service and the weighted HTTPRoute.

Traffic Replicas: the canary's pods carry the stable pods' Service labels, so the one Service spreads
requests over both revisions by pod count. Traffic HTTPRoute: the canary's pods carry another component
label (the one Service keeps only the stable pods) and a canary Service; the HTTPRoute splits requests
between the two Services by weight.
"""

from __future__ import annotations

from typing import Any

from modeldeploy.api import Canary, ModelDeployment, TrafficSplit
from modeldeploy.kinds import HTTP_ROUTE
from modeldeploy.labels import NAME_LABEL, Owner, child_manifest, standard_labels
from modeldeploy.manifests.common import owner_of
from modeldeploy.manifests.deployment import HTTP_PORT, build_deployment
from modeldeploy.manifests.service import build_service
from modeldeploy.names import dns_label, label_value
from modeldeploy.settings import ANNOTATION_PREFIX, RenderSettings

TRACK_LABEL = f"{ANNOTATION_PREFIX}/track"
CANARY = "canary"
# The canary pods' component with traffic HTTPRoute: outside the one Service's selector.
CANARY_INFERENCE_SERVER = "canary-inference-server"


def canary_name(md_name: str) -> str:
    """The canary Deployment's (and Service's) name: the stable one's with -canary, so its pods are
    `<stable>-canary-<hash>-<suffix>` (see prometheus.RevisionSelector)."""
    return dns_label(md_name, CANARY)


def canary_selector(owner: Owner) -> dict[str, str]:
    return {NAME_LABEL: label_value(owner.name), TRACK_LABEL: CANARY}


def is_canary_pod(pod: dict[str, Any]) -> bool:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(TRACK_LABEL) == CANARY


def _component(canary: Canary) -> str | None:
    """The canary pods' component label; None: the stable pods' own (traffic Replicas)."""
    return CANARY_INFERENCE_SERVER if canary.traffic is TrafficSplit.HTTP_ROUTE else None


def build_canary_deployment(
    md: ModelDeployment,
    settings: RenderSettings,
    canary: Canary,
    replicas: int,
    calibration_sha256: str | None = None,
) -> dict[str, Any]:
    """The spec's Deployment under the canary's name, selector and labels, at `replicas` pods (set by the
    step machine; never by an autoscaler, which targets the stable Deployment)."""
    owner = owner_of(md)
    manifest = build_deployment(md, settings, calibration_sha256)
    name = canary_name(md.metadata.name)
    component = _component(canary)
    labels = standard_labels(owner, component) if component else standard_labels(owner)
    manifest["metadata"]["name"] = name
    manifest["metadata"]["labels"] = {**labels, TRACK_LABEL: CANARY}
    spec = manifest["spec"]
    spec["replicas"] = replicas
    spec["selector"] = {"matchLabels": canary_selector(owner)}
    spec["template"]["metadata"]["labels"] = {**labels, TRACK_LABEL: CANARY}
    # Ordered so that `replicas` reads first, as in the stable Deployment.
    manifest["spec"] = {"replicas": replicas, **{k: v for k, v in spec.items() if k != "replicas"}}
    return manifest


def build_canary_service(md: ModelDeployment) -> dict[str, Any]:
    """Traffic HTTPRoute: the canary pods' own Service, the route's second backend."""
    owner = owner_of(md)
    manifest = build_service(md)
    manifest["metadata"]["name"] = canary_name(md.metadata.name)
    manifest["metadata"]["labels"] = {**standard_labels(owner, CANARY_INFERENCE_SERVER), TRACK_LABEL: CANARY}
    manifest["spec"]["selector"] = canary_selector(owner)
    return manifest


def build_http_route(md: ModelDeployment, canary: Canary, weight: int | None) -> dict[str, Any]:
    """The HTTPRoute splitting KServe v2 HTTP requests: `weight`% to the canary Service, the rest to the
    stable one (the ModelDeployment's own Service). Without a canary running (`weight` None) it routes
    everything to the stable Service: the Gateway's clients keep their route between canaries."""
    assert canary.gateway_ref is not None
    owner = owner_of(md)
    parent: dict[str, Any] = {"name": canary.gateway_ref.name}
    if canary.gateway_ref.namespace:
        parent["namespace"] = canary.gateway_ref.namespace
    spec = {
        "parentRefs": [parent],
        "rules": [
            {
                "backendRefs": [
                    {"name": owner.names.service, "port": HTTP_PORT, "weight": 100 - (weight or 0)},
                    *(
                        [{"name": canary_name(md.metadata.name), "port": HTTP_PORT, "weight": weight}]
                        if weight is not None
                        else []
                    ),
                ]
            }
        ],
    }
    return child_manifest(HTTP_ROUTE, owner, owner.names.service, spec)
