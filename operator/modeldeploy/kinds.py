"""The kinds of object the operator reads and writes: one home for each apiVersion/kind/plural.

Pure (no client), so the manifest builders, the kopf wiring and the API client all name a kind the same
way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modeldeploy import server_api
from modeldeploy.api import API_VERSION, KIND, PLURAL


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def reference(self, name: str) -> dict[str, Any]:
        """An object reference (a scaleTargetRef, the start of an ownerReference)."""
        return {"apiVersion": self.api_version, "kind": self.kind, "name": name}

    def __str__(self) -> str:
        return self.kind


DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
SERVICE = Kind("v1", "Service", "services")
PERSISTENT_VOLUME_CLAIM = Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
JOB = Kind("batch/v1", "Job", "jobs")
HORIZONTAL_POD_AUTOSCALER = Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
POD_DISRUPTION_BUDGET = Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
SCALED_OBJECT = Kind("keda.sh/v1alpha1", "ScaledObject", "scaledobjects")
SERVICE_MONITOR = Kind("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors")
NETWORK_POLICY = Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
POD = Kind("v1", "Pod", "pods")
EVENT = Kind("v1", "Event", "events")
# Read: the calibration texts of spec.triton.calibration (they count in the digest); written: a shared
# server's model list.
CONFIG_MAP = Kind("v1", "ConfigMap", "configmaps")
MODEL_DEPLOYMENT = Kind(API_VERSION, KIND, PLURAL)
# Gateway API: only where installed (a canary with traffic HTTPRoute); not watched.
HTTP_ROUTE = Kind("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes")
# A shared server's kind and its model list (docs/packing.md).
MODEL_SERVER = Kind(API_VERSION, server_api.KIND, server_api.PLURAL)
CHILD_KINDS = (
    PERSISTENT_VOLUME_CLAIM,
    JOB,
    DEPLOYMENT,
    SERVICE,
    HORIZONTAL_POD_AUTOSCALER,
    SCALED_OBJECT,
    POD_DISRUPTION_BUDGET,
    SERVICE_MONITOR,
    NETWORK_POLICY,
)
KEDA_CRD = f"{SCALED_OBJECT.plural}.{SCALED_OBJECT.group}"
SERVICE_MONITOR_CRD = f"{SERVICE_MONITOR.plural}.{SERVICE_MONITOR.group}"
HTTP_ROUTE_CRD = f"{HTTP_ROUTE.plural}.{HTTP_ROUTE.group}"
_BY_KIND = {
    kind.kind: kind for kind in (*CHILD_KINDS, POD, CONFIG_MAP, MODEL_DEPLOYMENT, MODEL_SERVER, HTTP_ROUTE)
}


def kind_of(manifest: Mapping[str, Any]) -> Kind:
    return _BY_KIND[str(manifest["kind"])]
