"""spec.api and spec.network: the protocols served besides Triton's own (the sidecar's route groups and
their API keys) and the NetworkPolicy deciding who may connect."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field

from model_repo.openai_frontend.token_arrays import TokenArrays
from model_repo.options import Task
from modeldeploy.api.base import ApiModel, Rule, optional_field
from modeldeploy.names import DNS1123_SUBDOMAIN, LABEL_VALUE

# Triton's own ports in the pod (HTTP, gRPC, metrics): the OpenAI sidecar must not take one of them.
TRITON_PORTS = (8000, 8001, 8002)
OPENAI_TASKS = (Task.FEATURE_EXTRACTION, Task.TEXT_GENERATION)
# The sidecar's other route groups and the tasks each fits (model_repo/openai_frontend: rerank.py, tei.py).
ROUTE_TASKS: dict[str, tuple[Task, ...]] = {
    "rerank": (Task.TEXT_RANKING,),
    "classify": (Task.TEXT_CLASSIFICATION,),
    "tei": (Task.FEATURE_EXTRACTION, Task.TEXT_RANKING, Task.TEXT_CLASSIFICATION),
}
DEFAULT_API_PORT = 9000
# Any route group of the sidecar enabled: what API keys and a loopback-only Triton need.
SIDECAR_ENABLED_CEL = (
    "((has(self.openai) && self.openai.enabled) || "
    + " || ".join(f"(has(self.{name}) && self.{name})" for name in ROUTE_TASKS)
    + ")"
)
SIDECAR_GROUPS = "spec.api.openai.enabled true or one of " + ", ".join(
    f"spec.api.{name}" for name in ROUTE_TASKS
)


class OpenAIApi(ApiModel):
    """An OpenAI-compatible API for this model (docs/openai.md): a sidecar in each Triton pod serves
    /v1/models, /v1/embeddings (feature-extraction) and /v1/completions and /v1/chat/completions
    (text-generation), calling Triton over gRPC on localhost."""

    enabled: bool = Field(default=False, description="Run the OpenAI-compatible sidecar.")
    port: int = Field(
        default=9000,
        ge=1024,
        le=65535,
        description="Container and Service port of the API (the Service port is named openai).",
    )
    token_arrays: TokenArrays = Field(
        default=TokenArrays.MODEL,
        description=(
            "Whose token ids the token arrays of /v1/embeddings hold (the ids alone cannot say: most "
            "cl100k_base ids are valid model ids too). model: the served model's tokenizer. cl100k_base: "
            "tiktoken's cl100k_base, what LangChain's OpenAIEmbeddings (with its defaults) and OpenAI's "
            "own tooling send; decoded to text with tiktoken, then embedded as text."
        ),
    )

    __rules__ = (
        Rule(
            cel="!(self.port in [8000, 8001, 8002])",
            message="spec.api.openai.port must differ from Triton's ports 8000, 8001 and 8002",
            check=lambda o: o.port not in TRITON_PORTS,
            field_path=".port",
        ),
    )


class ApiAuth(ApiModel):
    """API keys that every route of the sidecar but its health checks requires (docs/security.md)."""

    secret_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description=(
            "A Secret in the same namespace: each non-empty line of each of its values is an accepted key "
            "(sent as 'Authorization: Bearer <key>'). Several keys rotate without downtime: add the new "
            "one, move the clients, remove the old. Mounted, not copied: a change reaches running pods "
            "without a restart, within the kubelet's sync period (about a minute) plus 2 seconds."
        ),
    )


# The header that unlocks Triton's administrative APIs (model repository, shared memory, trace, logging).
# Its value is drawn at random when the container starts and never leaves it: no one can send it.
RESTRICTED_API_HEADER = "modeldeploy-restricted"


class Api(ApiModel):
    """Protocols served besides Triton's own KServe v2 HTTP and gRPC, and who may call them. One sidecar
    serves every enabled one, on spec.api.openai.port (9000 unless set)."""

    openai: OpenAIApi | None = optional_field("The OpenAI-compatible API (off when omitted).")
    rerank: bool = Field(
        default=False,
        description=(
            "Serve /v1/rerank and /v2/rerank (Cohere/Jina shape) and /v1/score (vLLM's): text-ranking."
        ),
    )
    classify: bool = Field(
        default=False, description="Serve /v1/classify (vLLM's shape): text-classification."
    )
    tei: bool = Field(
        default=False,
        description=(
            "Serve Hugging Face TEI's routes (/embed, /rerank, /predict, /tokenize, /decode, /info and "
            "POST /): feature-extraction, text-ranking or text-classification."
        ),
    )
    auth: ApiAuth | None = optional_field(
        "API keys for the sidecar's routes (needs one of its route groups enabled: spec.api.openai, "
        "rerank, classify or tei); none when omitted."
    )
    expose_triton: bool | None = optional_field(
        "Whether Triton's own HTTP and gRPC APIs listen on the pod's address (and the Service offers "
        "them). false keeps them on the pod's loopback: the sidecar is the only way in. Default: false "
        "with spec.api.auth (keys are pointless if Triton can be called around them), true otherwise "
        "(Triton's API is then how clients reach the model). Either way Triton's model-repository, "
        "shared-memory, trace and logging APIs answer no request from outside the container."
    )

    __rules__ = (
        Rule(
            cel=f"!has(self.auth) || {SIDECAR_ENABLED_CEL}",
            message=f"spec.api.auth protects the sidecar's API: it needs {SIDECAR_GROUPS}",
            check=lambda a: a.auth is None or a.sidecar_enabled,
            field_path=".auth",
        ),
        Rule(
            cel=f"!has(self.exposeTriton) || self.exposeTriton || {SIDECAR_ENABLED_CEL}",
            message=(
                "spec.api.exposeTriton false leaves the sidecar as the only way in: it needs "
                + SIDECAR_GROUPS
            ),
            check=lambda a: a.expose_triton is not False or a.sidecar_enabled,
            field_path=".exposeTriton",
        ),
    )

    @property
    def sidecar_enabled(self) -> bool:
        """Whether any of the sidecar's route groups is on (so that the sidecar runs)."""
        return (self.openai is not None and self.openai.enabled) or any(
            getattr(self, name) for name in ROUTE_TASKS
        )

    @property
    def triton_exposed(self) -> bool:
        if self.expose_triton is not None:
            return self.expose_triton
        return self.auth is None


# A qualified label key ([DNS-subdomain prefix/]name): apimachinery's rule, lengths approximated by the
# name's 63 characters and the whole key's 316. Alternations rather than `[...](...)?` groups: the
# schema pattern of matchExpressions keys is quoted in docs/api-reference.md, where `](` reads as a link.
LABEL_KEY = (
    r"^(([a-z0-9]|[a-z0-9][-a-z0-9]*[a-z0-9])(\.([a-z0-9]|[a-z0-9][-a-z0-9]*[a-z0-9]))*/)?"
    r"([A-Za-z0-9]|[A-Za-z0-9][-A-Za-z0-9_.]{0,61}[A-Za-z0-9])$"
)


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(ApiModel):
    """One requirement of a label selector (metav1.LabelSelectorRequirement)."""

    key: str = Field(min_length=1, max_length=316, pattern=LABEL_KEY, description="The label key.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]] | None = optional_field(
        "Label values: at least one for In and NotIn, none for Exists and DoesNotExist.", max_length=64
    )

    __rules__ = (
        Rule(
            cel=("(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)"),
            message=(
                "spec.network selectors: matchExpressions values must be non-empty for operator In and "
                "NotIn, and absent for Exists and DoesNotExist"
            ),
            check=lambda r: (r.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)) == bool(r.values),
            field_path=".values",
        ),
    )


def _check_label_keys(labels: dict[str, str] | None) -> dict[str, str] | None:
    bad = [key for key in labels or {} if len(key) > 316 or not re.fullmatch(LABEL_KEY, key)]
    if bad:
        raise ValueError(
            f"{', '.join(repr(key) for key in bad)} is not a label key ([prefix/]name, the name 1-63 of "
            "[A-Za-z0-9_.-], the prefix a DNS subdomain)"
        )
    return labels


class LabelSelector(ApiModel):
    """A label selector (metav1.LabelSelector); empty selects everything."""

    # The keys are checked by the operator (the status names the field), not by a CEL rule at admission:
    # a regular expression over map keys of unbounded length, in every selector of two lists, risks the
    # API server's CEL cost budget for the whole CRD (judged, not measured).
    match_labels: Annotated[
        dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]] | None,
        AfterValidator(_check_label_keys),
    ] = optional_field(
        "Labels that must all match (key: value).", max_length=64, json_schema_extra={"maxProperties": 64}
    )
    match_expressions: list[LabelSelectorRequirement] | None = optional_field(
        "Requirements that must all hold.", max_length=32
    )


class NetworkPeer(ApiModel):
    """Pods that may connect: those matching podSelector in the namespaces matching namespaceSelector.
    With only namespaceSelector, every pod of those namespaces; with only podSelector, those pods of the
    model's own namespace."""

    namespace_selector: LabelSelector | None = optional_field(
        "Namespaces, by their labels (kubernetes.io/metadata.name is the name)."
    )
    pod_selector: LabelSelector | None = optional_field("Pods, by their labels.")

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.namespaceSelector) || has(self.podSelector)",
            message="spec.network peers need namespaceSelector, podSelector or both",
            check=lambda p: p.namespace_selector is not None or p.pod_selector is not None,
        ),
    )


class EgressPeer(NetworkPeer):
    """A destination the pods may connect to: pods (as for ingress) or an IP block."""

    cidr: str | None = optional_field(
        "An IP block (CIDR), e.g. 10.0.0.0/8 or 0.0.0.0/0, instead of selectors.", max_length=64
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.cidr) != (has(self.namespaceSelector) || has(self.podSelector))",
            message=(
                "spec.network.egressTo peers are either a cidr or selectors (namespaceSelector, podSelector)"
            ),
            check=lambda p: (
                (p.cidr is not None) != (p.namespace_selector is not None or p.pod_selector is not None)
            ),
        ),
        Rule(
            cel="!has(self.cidr) || isCIDR(self.cidr)",
            message="spec.network.egressTo cidr must be an IPv4 or IPv6 CIDR, e.g. 10.0.0.0/8",
            check=lambda p: p.cidr is None or _is_cidr(p.cidr),
            field_path=".cidr",
        ),
    )


def _is_cidr(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        return False
    return "/" in value


class Network(ApiModel):
    """A NetworkPolicy for this model's pods (docs/security.md). Enforced only where the cluster's network
    plugin implements NetworkPolicy (Calico, Cilium, ...); elsewhere it is accepted and has no effect."""

    allow_from: list[NetworkPeer] | None = optional_field(
        "Who may reach the serving ports (the sidecar's API, and Triton's HTTP and gRPC while exposed). "
        "Default: pods of the model's own namespace. An empty list: no one outside the pod.",
        max_length=32,
    )
    monitoring_namespace: str | None = optional_field(
        "The namespace whose pods may scrape Triton's metrics port; closed to all when omitted.",
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    )
    egress_to: list[EgressPeer] | None = optional_field(
        "Where the pods may connect (DNS to any namespace is always allowed). Omitted: egress is left "
        "alone (not part of the policy). Note the builder init container downloads the checkpoint "
        "from the pods, so hf://, s3:// and gs:// sources need those endpoints listed.",
        max_length=32,
    )
