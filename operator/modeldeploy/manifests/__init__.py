"""Pure builders: a parsed ModelDeployment (and the operator's settings) in, complete manifests out.

One module per child object. `desired_state` puts them together; the reconciler applies it and `render`
prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modeldeploy.api import AutoscalingEngine, ModelDeployment
from modeldeploy.digest import repository_digest
from modeldeploy.labels import Owner
from modeldeploy.manifests.common import owner_of
from modeldeploy.manifests.deployment import build_deployment
from modeldeploy.manifests.horizontalpodautoscaler import build_horizontal_pod_autoscaler
from modeldeploy.manifests.job import build_build_job
from modeldeploy.manifests.networkpolicy import build_network_policy
from modeldeploy.manifests.persistentvolumeclaim import build_cache_claim, wants_cache_claim
from modeldeploy.manifests.poddisruptionbudget import (
    build_pod_disruption_budget,
    wants_pod_disruption_budget,
)
from modeldeploy.manifests.scaledobject import build_scaled_object
from modeldeploy.manifests.service import build_service
from modeldeploy.manifests.servicemonitor import build_service_monitor
from modeldeploy.settings import ClusterCapabilities, RenderSettings

Manifest = dict[str, Any]


@dataclass(frozen=True)
class DesiredState:
    """Every object one ModelDeployment should have; None where an object must not exist."""

    owner: Owner
    digest: str
    cache_claim: Manifest | None
    build_job: Manifest | None
    deployment: Manifest
    service: Manifest
    horizontal_pod_autoscaler: Manifest | None
    scaled_object: Manifest | None
    pod_disruption_budget: Manifest | None
    service_monitor: Manifest | None
    network_policy: Manifest | None = None
    # What the digest was computed with (a canary's Deployment is built from the same inputs).
    calibration_sha256: str | None = None

    def manifests(self) -> list[Manifest]:
        """In the order they are applied: storage and build first, the autoscaler after its target."""
        ordered = [
            self.cache_claim,
            self.build_job,
            self.deployment,
            self.service,
            self.horizontal_pod_autoscaler,
            self.scaled_object,
            self.pod_disruption_budget,
            self.service_monitor,
            self.network_policy,
        ]
        return [manifest for manifest in ordered if manifest is not None]


def desired_state(
    md: ModelDeployment,
    settings: RenderSettings,
    capabilities: ClusterCapabilities,
    calibration_sha256: str | None = None,
) -> DesiredState:
    """`calibration_sha256`: see `modeldeploy.digest.repository_inputs`."""
    autoscaling = md.spec.autoscaling
    hpa = autoscaling if autoscaling is not None and autoscaling.engine is AutoscalingEngine.HPA else None
    keda = autoscaling if autoscaling is not None and autoscaling.engine is AutoscalingEngine.KEDA else None
    return DesiredState(
        owner=owner_of(md),
        digest=repository_digest(md.spec, md.metadata.name, calibration_sha256),
        cache_claim=build_cache_claim(md) if wants_cache_claim(md) else None,
        build_job=build_build_job(md, settings, calibration_sha256) if md.spec.cache is not None else None,
        deployment=build_deployment(md, settings, calibration_sha256),
        service=build_service(md),
        horizontal_pod_autoscaler=build_horizontal_pod_autoscaler(md, hpa) if hpa is not None else None,
        # Built even when KEDA is missing: the reconciler reports that instead of silently dropping it.
        scaled_object=build_scaled_object(md, keda, settings) if keda is not None else None,
        pod_disruption_budget=build_pod_disruption_budget(md) if wants_pod_disruption_budget(md) else None,
        service_monitor=build_service_monitor(md) if capabilities.service_monitors else None,
        network_policy=build_network_policy(md) if md.spec.network is not None else None,
        calibration_sha256=calibration_sha256,
    )
