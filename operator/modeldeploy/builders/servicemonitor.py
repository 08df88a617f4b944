"""The Prometheus operator's ServiceMonitor for Triton's metrics (only when its CRD exists)."""

from __future__ import annotations

from typing import Any

from modeldeploy.api import ModelDeployment
from modeldeploy.builders.common import owner_of
from modeldeploy.labels import object_meta, selector_labels

SCRAPE_INTERVAL = "15s"


def build_service_monitor(md: ModelDeployment) -> dict[str, Any]:
    owner = owner_of(md)
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": object_meta(owner, owner.names.service_monitor),
        "spec": {
            "selector": {"matchLabels": selector_labels(owner)},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": SCRAPE_INTERVAL}],
        },
    }
