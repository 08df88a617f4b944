"""The ModelServer API (modeldeploy.dev/v1alpha1): one shared Triton server many ModelDeployments are
loaded into (`ModelDeployment.spec.server`), in explicit model-control mode (docs/packing.md).

Like modeldeploy.api, these pydantic models generate the CRD (server_crd.py) and validate what the
operator reads.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from model_repo.triton_args import DEFAULT_CPU_WAIT_POLICY, CpuWaitPolicy
from modeldeploy.api import (
    CPU_WAIT_POLICY_DESCRIPTION,
    ApiModel,
    Autoscaling,
    Condition,
    KubeObject,
    ObservedGeneration,
    PodSelector,
    Quantity,
    ReadyReplicas,
    Replicas,
    Resources,
    Rule,
    conditions_field,
    optional_field,
    quantity_schema,
)
from modeldeploy.names import DNS1123_SUBDOMAIN
from modeldeploy.quantity import parse_quantity

KIND = "ModelServer"
PLURAL = "modelservers"
SINGULAR = "modelserver"
SHORT_NAMES = ["mserver"]

# GPU memory of the products GPU Feature Discovery names (nvidia.com/gpu.product), in bytes as the
# vendor states it. The default capacity keeps a tenth back for CUDA contexts, the stubs and Triton.
GPU_MEMORY_BY_PRODUCT = {
    "NVIDIA-H200": 141_000_000_000,
    "NVIDIA-H100-80GB-HBM3": 80_000_000_000,
    "NVIDIA-A100-SXM4-80GB": 80_000_000_000,
    "NVIDIA-A100-SXM4-40GB": 40_000_000_000,
    "NVIDIA-A100-PCIE-40GB": 40_000_000_000,
    "NVIDIA-L40S": 48_000_000_000,
    "NVIDIA-L4": 24_000_000_000,
    "NVIDIA-A10G": 24_000_000_000,
    "Tesla-T4": 16_000_000_000,
}
DEFAULT_CAPACITY_FRACTION = 0.9
_KNOWN_PRODUCTS_CEL = "[" + ", ".join(f"'{product}'" for product in GPU_MEMORY_BY_PRODUCT) + "]"


class ServerCache(ApiModel):
    """The PersistentVolumeClaim holding the placed models' built repositories (content-addressed: one
    directory per digest). The server's pods mount it read-only; the operator's build Jobs write it."""

    claim_name: Annotated[
        str, Field(max_length=253, pattern=DNS1123_SUBDOMAIN, description="An existing PVC (ReadWriteMany).")
    ]


class ServerTriton(ApiModel):
    """Settings of the shared tritonserver."""

    response_cache: bool = Field(
        default=False, description="Start the server with a response cache (for models that enable it)."
    )
    agent_interval_seconds: int = Field(
        default=5,
        ge=1,
        le=300,
        description="How often the agent container reconciles Triton's loaded models with the model list.",
    )
    cpu_wait_policy: CpuWaitPolicy = Field(
        default=DEFAULT_CPU_WAIT_POLICY, description=CPU_WAIT_POLICY_DESCRIPTION
    )
    shared_runtime: bool = Field(
        default=True,
        description="Run every packed encoder (text-classification, text-ranking, token-classification, "
        "feature-extraction, fill-mask; python format) in one shared host model behind a light forwarder "
        "per model: torch is imported once and a GPU holds one CUDA context, so each model costs little "
        "more than its weights. false gives each model its own Python stub (a model's fault or slow "
        "batch touches no other; about 450 MiB more per model). Generators and onnx models always get "
        "their own. docs/packing.md.",
    )


class ModelServerSpec(ApiModel):
    """Desired state of a ModelServer: one Triton Deployment that many ModelDeployments are loaded into."""

    replicas: Annotated[
        int, Field(default=1, ge=0, le=1000, description="Triton pods (ignored while autoscaling is set).")
    ] = 1
    autoscaling: Autoscaling | None = optional_field("Autoscale the server's pods on a Triton metric.")
    resources: Annotated[
        Resources, Field(default_factory=Resources, description="Compute and placement of each pod.")
    ]
    capacity: Quantity | None = optional_field(
        "Device memory for models (GPU memory with gpus >= 1, else host memory). A model is placed "
        "only while the memory its repository records fits. Default: 90% of the gpuProduct's memory "
        "where the product is known; required otherwise.",
        json_schema_extra=quantity_schema(
            "Device memory for models; default 90% of a known gpuProduct's memory, else required."
        ),
    )
    cache: Annotated[ServerCache, Field(description="Where the placed models' repositories are built.")]
    triton: Annotated[
        ServerTriton, Field(default_factory=ServerTriton, description="Settings of the shared tritonserver.")
    ]

    def capacity_bytes(self) -> int:
        if self.capacity is not None:
            return int(parse_quantity(str(self.capacity)))
        product = self.resources.gpu_product
        assert product is not None and product in GPU_MEMORY_BY_PRODUCT  # the capacity rule holds
        return int(GPU_MEMORY_BY_PRODUCT[product] * DEFAULT_CAPACITY_FRACTION)

    __rules__ = (
        Rule(
            cel=(
                "has(self.capacity) || (has(self.resources) && has(self.resources.gpuProduct) && "
                f"self.resources.gpuProduct in {_KNOWN_PRODUCTS_CEL})"
            ),
            message=(
                "spec.capacity is required unless spec.resources.gpuProduct is a GPU whose memory is known ("
                + ", ".join(GPU_MEMORY_BY_PRODUCT)
                + ")"
            ),
            check=lambda s: s.capacity is not None or s.resources.gpu_product in GPU_MEMORY_BY_PRODUCT,
            field_path=".capacity",
        ),
    )


class PlacedModel(ApiModel):
    """A ModelDeployment placed on (or refused by) this server."""

    name: str = Field(max_length=253, description="The ModelDeployment.")
    state: str = Field(
        max_length=64,
        description="READY, LOADING, UNAVAILABLE (Triton's states), Pending (not built yet) or DoesNotFit.",
    )
    memory: str = Field(max_length=32, description="Memory its repository records (bytes, as a quantity).")
    message: str | None = optional_field("Triton's error, or why it waits.", max_length=4096)


class ModelServerStatus(ApiModel):
    """Observed state, written only by the operator."""

    observed_generation: ObservedGeneration = None
    conditions: list[Condition] | None = conditions_field("Available and Ready.")
    replicas: Replicas = None
    ready_replicas: ReadyReplicas = None
    selector: PodSelector = None
    capacity: str | None = optional_field("Device memory for models (bytes).")
    used: str | None = optional_field("Memory the placed models record (bytes).")
    memory_summary: str | None = optional_field("used/capacity, for kubectl get.")
    model_summary: str | None = optional_field("ready/placed models, for kubectl get.")
    models: list[PlacedModel] | None = optional_field(
        "Each ModelDeployment that names this server.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class ModelServer(KubeObject[ModelServerSpec, ModelServerStatus]):
    """A ModelServer as the operator sees it."""

    kind: str = KIND


parse_server_spec = ModelServer.parse_spec
parse_model_server = ModelServer.parse
