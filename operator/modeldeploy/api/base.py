"""What every model of this API shares, a ModelServer's (server_api.py) too: the group/version/kind, ApiModel
(camelCase, CEL rules in the schema and checked in Python), Rule, Kubernetes quantities, and KubeObject with
the parsing whose SpecError names each bad field."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Generic, Self, TypeVar, cast

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

GROUP = "modeldeploy.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["mdeploy"]

# Kubernetes resource.Quantity, as apimachinery parses it.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def quantity_schema(description: str) -> dict[str, Any]:
    return {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN,
        "description": description,
    }


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, int) or re.fullmatch(QUANTITY_PATTERN, value):
        return value
    raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 2, 500m, 8Gi)")


Quantity = Annotated[int | str, AfterValidator(_check_quantity)]


def optional_field(description: str, **constraints: Any) -> Any:
    """A field that may be omitted: None then, and left out of the dumped object (ApiModel.dump)."""
    return Field(default=None, description=description, **constraints)


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, written once: a CEL expression for the API server and a Python check for the
    operator. `message` names the field and says what is allowed; both sides report it verbatim."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def as_schema(self) -> dict[str, str]:
        rule = {"rule": self.cel, "message": self.message}
        if self.field_path:
            rule["fieldPath"] = self.field_path
        return rule


class SpecError(ValueError):
    """A spec that breaks the API's rules; `messages` are each prefixed with the offending field."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
        validate_default=True,
    )
    # This object's cross-field rules: CEL in its schema, checked in Python after field validation.
    __rules__: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        broken = [rule.message for rule in type(self).__rules__ if not rule.check(self)]
        if broken:
            raise ValueError("; ".join(broken))
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema: dict[str, Any] = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        if cls.__rules__:
            target["x-kubernetes-validations"] = [rule.as_schema() for rule in cls.__rules__]
        if cls.__doc__:
            target["description"] = " ".join(cls.__doc__.split())
        return schema

    def dump(self) -> dict[str, Any]:
        """The camelCase JSON form, without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


def format_error(error: Any) -> str:
    path = ".".join(str(part) for part in error["loc"])
    message: str = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
        # Rule messages already name their full field path.
        if message.startswith("spec.") or not path:
            return message
    return f"{path}: {message}" if path else message


def to_camel_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(to_camel(part) if isinstance(part, str) else part for part in loc)


_SpecT = TypeVar("_SpecT", bound=ApiModel)


def validate_spec(model: type[_SpecT], spec: dict[str, Any]) -> _SpecT:
    """Validate a raw `spec` dict; raise SpecError whose messages each name the offending field."""
    try:
        return model.model_validate(spec)
    except ValidationError as exc:
        raise SpecError(
            [
                format_error({**error, "loc": ("spec", *to_camel_path(tuple(error["loc"])))})
                for error in exc.errors()
            ]
        ) from exc


_StatusT = TypeVar("_StatusT", bound=ApiModel)


class KubeObject(BaseModel, Generic[_SpecT, _StatusT]):
    """An object of one of this API's kinds as the operator sees it; each kind names its spec and status
    models (`KubeObject[Spec, Status]`) and its kind."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: str
    metadata: ObjectMeta
    spec: _SpecT
    status: _StatusT | None = None

    @classmethod
    def parse_spec(cls: type[KubeObject[_SpecT, Any]], spec: dict[str, Any]) -> _SpecT:
        """Validate a raw `spec` dict; raise SpecError whose messages each name the offending field."""
        # The spec field's annotation, in a kind's class, is the spec model it was parametrized with.
        return validate_spec(cast("type[_SpecT]", cls.model_fields["spec"].annotation), spec)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Self:
        """Validate a whole object (as kopf hands it over): its spec first, so a bad one raises SpecError.
        apiVersion and kind keep their defaults."""
        spec = cls.parse_spec(dict(body.get("spec") or {}))
        metadata = dict(body.get("metadata") or {})
        return cls.model_validate({"metadata": metadata, "spec": spec, "status": body.get("status") or None})
