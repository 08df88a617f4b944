"""The ModelDeployment object as the operator reads it, and the validation that names each bad field."""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from modeldeploy.api.base import (
    API_VERSION,
    KIND,
    ObjectMeta,
    SpecError,
    format_error,
    to_camel_path,
)
from modeldeploy.api.spec import ModelDeploymentSpec
from modeldeploy.api.status import ModelDeploymentStatus


class ModelDeployment(BaseModel):
    """A ModelDeployment as the operator sees it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None


def parse_spec(spec: dict[str, Any]) -> ModelDeploymentSpec:
    """Validate a raw `spec` dict; raise SpecError whose messages each name the offending field."""
    try:
        return ModelDeploymentSpec.model_validate(spec)
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            loc = ("spec", *to_camel_path(tuple(error["loc"])))
            messages.append(format_error({**error, "loc": loc}))
        raise SpecError(messages) from exc


def parse_model_deployment(body: dict[str, Any]) -> ModelDeployment:
    """Validate a whole object (as kopf hands it over)."""
    spec = parse_spec(dict(body.get("spec") or {}))
    return ModelDeployment(
        metadata=ObjectMeta.model_validate(dict(body.get("metadata") or {})),
        spec=spec,
        status=ModelDeploymentStatus.model_validate(body["status"]) if body.get("status") else None,
    )
