"""The Prometheus operator's ServiceMonitor for Triton's metrics (only when its CRD exists)."""

from __future__ import annotations

from typing import Any

from modeldeploy.api import ModelDeployment
from modeldeploy.kinds import SERVICE_MONITOR
from modeldeploy.labels import child_manifest, selector_labels
from modeldeploy.manifests.common import owner_of

SCRAPE_INTERVAL = "15s"


def build_service_monitor(md: ModelDeployment) -> dict[str, Any]:
    owner = owner_of(md)
    spec = {
        "selector": {"matchLabels": selector_labels(owner)},
        "endpoints": [{"port": "metrics", "path": "/metrics", "interval": SCRAPE_INTERVAL}],
    }
    return child_manifest(SERVICE_MONITOR, owner, owner.names.service_monitor, spec)
