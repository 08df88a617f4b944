"""The ModelDeployment object as the operator reads it, and the validation that names each bad field."""

from __future__ import annotations

from typing import Any

from modeldeploy.api.base import KIND, KubeObject, parse_object, validate_spec
from modeldeploy.api.spec import ModelDeploymentSpec
from modeldeploy.api.status import ModelDeploymentStatus


class ModelDeployment(KubeObject):
    """A ModelDeployment as the operator sees it."""

    kind: str = KIND
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None


def parse_spec(spec: dict[str, Any]) -> ModelDeploymentSpec:
    """Validate a raw `spec` dict; raise SpecError whose messages each name the offending field."""
    return validate_spec(ModelDeploymentSpec, spec)


def parse_model_deployment(body: dict[str, Any]) -> ModelDeployment:
    """Validate a whole object (as kopf hands it over)."""
    return parse_object(ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus, body)
