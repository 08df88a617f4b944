"""The ModelDeployment object as the operator reads it, and the validation that names each bad field."""

from __future__ import annotations

from modeldeploy.api.base import KIND, KubeObject
from modeldeploy.api.spec import ModelDeploymentSpec
from modeldeploy.api.status import ModelDeploymentStatus


class ModelDeployment(KubeObject[ModelDeploymentSpec, ModelDeploymentStatus]):
    """A ModelDeployment as the operator sees it."""

    kind: str = KIND


parse_spec = ModelDeployment.parse_spec
parse_model_deployment = ModelDeployment.parse
