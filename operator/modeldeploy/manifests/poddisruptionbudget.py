"""The PodDisruptionBudget, when more than one Triton pod may run."""

from __future__ import annotations

from typing import Any

from modeldeploy.api import ModelDeployment
from modeldeploy.kinds import POD_DISRUPTION_BUDGET
from modeldeploy.labels import child_manifest, selector_labels
from modeldeploy.manifests.common import owner_of


def wants_pod_disruption_budget(md: ModelDeployment) -> bool:
    if md.spec.autoscaling is not None:
        return md.spec.autoscaling.max_replicas > 1
    return md.spec.replicas > 1


def build_pod_disruption_budget(md: ModelDeployment) -> dict[str, Any]:
    owner = owner_of(md)
    spec = {
        # One at a time: voluntary disruptions (drains) never take the model down, and a maxUnavailable
        # budget, unlike minAvailable, keeps working when the replica count changes.
        "maxUnavailable": 1,
        "selector": {"matchLabels": selector_labels(owner)},
        # A pod that never got Ready (e.g. stuck loading) must not block a node drain.
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    return child_manifest(POD_DISRUPTION_BUDGET, owner, owner.names.pod_disruption_budget, spec)
