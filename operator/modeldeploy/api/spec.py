"""spec.server and ModelDeploymentSpec: the whole desired state, with the rules that span its parts."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from model_repo.options import DType, ModelFormat, Quantization, Task
from model_repo.triton_args import CpuWaitPolicy
from modeldeploy.api.access import DEFAULT_API_PORT, OPENAI_TASKS, ROUTE_TASKS, Api, Network, OpenAIApi
from modeldeploy.api.base import ApiModel, Rule, optional_field
from modeldeploy.api.resources import Autoscaling, AutoscalingEngine, AutoscalingMetric, Cache, Resources
from modeldeploy.api.rollout import Canary, Rollout
from modeldeploy.api.serving import ModelSource, TritonConfig
from modeldeploy.names import DNS1123_SUBDOMAIN


class ServerRef(ApiModel):
    """A shared ModelServer (same namespace) to load this model into instead of a Deployment of its own
    (docs/packing.md)."""

    name: Annotated[
        str,
        Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN, description="The ModelServer's name."),
    ]


# What only a Deployment of the model's own can honour: a model placed on a shared server takes the
# server's replicas, resources, cache and pods (no sidecars), so each is refused beside spec.server.
DEDICATED_ONLY_CEL = (
    "!has(self.server) || (self.replicas == 1 && !has(self.autoscaling) && !has(self.cache) && "
    "!has(self.api) && !has(self.rollout) && !has(self.network) && "
    "(!has(self.resources) || (self.resources.gpus == 0 && "
    "!has(self.resources.gpuProduct) && !has(self.resources.requests) && !has(self.resources.limits) && "
    "!has(self.resources.nodeSelector) && !has(self.resources.tolerations) && "
    "!has(self.resources.affinity))) && "
    "(!has(self.triton) || !has(self.triton.cpuWaitPolicy) || self.triton.cpuWaitPolicy == 'passive'))"
)
DEDICATED_ONLY_FIELDS = "replicas, autoscaling, resources, cache, api, rollout, network, triton.cpuWaitPolicy"


def _fits_shared_server(spec: ModelDeploymentSpec) -> bool:
    return spec.server is None or (
        spec.replicas == 1
        and spec.autoscaling is None
        and spec.cache is None
        and spec.api is None
        and spec.rollout is None
        and spec.network is None
        and spec.resources == Resources()
        # passive was the field's stored default before spin became the default: still accepted, ignored
        and spec.triton.cpu_wait_policy in (None, CpuWaitPolicy.PASSIVE)
    )


def _route_rule(name: str, tasks: tuple[Task, ...]) -> Rule:
    """spec.api.<name> only for the tasks its routes fit, refused at admission naming the field."""
    listed = ", ".join(f"'{task.value}'" for task in tasks)
    return Rule(
        cel=f"!has(self.api) || !has(self.api.{name}) || !self.api.{name} || "
        f"(has(self.model.task) && self.model.task in [{listed}])",
        message=f"spec.api.{name} needs spec.model.task set to {' or '.join(t.value for t in tasks)}",
        check=lambda s: s.api is None or not getattr(s.api, name) or s.model.task in tasks,
        field_path=f".api.{name}",
    )


def _generation_metric_rule(metric: AutoscalingMetric, needs: str, keda: bool = False) -> Rule:
    """spec.autoscaling.metric `metric` only for text-generation served by the python format (the runtime
    exports the generation metrics), and with `keda` only with that engine; refused naming the field."""
    engine_cel = "has(self.autoscaling.engine) && self.autoscaling.engine == 'keda' && " if keda else ""
    return Rule(
        cel=(
            f"!has(self.autoscaling) || self.autoscaling.metric != '{metric.value}' || "
            f"({engine_cel}has(self.model.task) && self.model.task == 'text-generation' && "
            "(!has(self.triton) || self.triton.format != 'vllm'))"
        ),
        message=f"spec.autoscaling.metric {metric.value} needs {needs}",
        check=lambda s: (
            s.autoscaling is None
            or s.autoscaling.metric != metric
            or (
                (not keda or s.autoscaling.engine == AutoscalingEngine.KEDA)
                and s.model.task == Task.TEXT_GENERATION
                and s.triton.format != ModelFormat.VLLM
            )
        ),
        field_path=".autoscaling.metric",
    )


class ModelDeploymentSpec(ApiModel):
    """Desired state of a ModelDeployment: a checkpoint served by Triton."""

    model: Annotated[ModelSource, Field(description="The checkpoint to serve.")]
    triton: Annotated[
        TritonConfig,
        Field(default_factory=TritonConfig, description="Triton repository and server settings."),
    ]
    resources: Annotated[
        Resources, Field(default_factory=Resources, description="Compute and placement of each pod.")
    ]
    replicas: Annotated[
        int,
        Field(
            default=1,
            ge=0,
            le=1000,
            description="Number of Triton pods (ignored while autoscaling is set). kubectl scale sets it.",
        ),
    ] = 1
    autoscaling: Autoscaling | None = optional_field(
        "Autoscale on a Triton metric; a fixed replica count when omitted."
    )
    cache: Cache | None = optional_field("Keep built repositories on a PVC; built in every pod when omitted.")
    api: Api | None = optional_field("Extra APIs in front of the model, e.g. OpenAI-compatible.")
    rollout: Rollout | None = optional_field(
        "How a new model repository reaches the pods; RollingUpdate when omitted."
    )

    @property
    def canary(self) -> Canary | None:
        """The canary settings when the rollout strategy is Canary, else None."""
        return self.rollout.effective_canary if self.rollout is not None else None

    network: Network | None = optional_field("A NetworkPolicy for the model's pods; none when omitted.")

    server: ServerRef | None = optional_field(
        "Load the model into this shared ModelServer (same namespace) instead of running a "
        "Deployment of its own; placed only where its recorded memory fits the server's capacity."
    )

    @property
    def openai(self) -> OpenAIApi | None:
        """The OpenAI API settings when it is enabled, else None."""
        if self.api is None or self.api.openai is None or not self.api.openai.enabled:
            return None
        return self.api.openai

    @property
    def triton_exposed(self) -> bool:
        """Whether Triton's HTTP and gRPC listen beyond the pod's loopback (spec.api.exposeTriton)."""
        return self.api is None or self.api.triton_exposed

    @property
    def api_routes(self) -> tuple[str, ...]:
        """The sidecar's enabled route groups (openai, rerank, classify, tei); empty: no sidecar."""
        if self.api is None:
            return ()
        groups = ["openai"] if self.openai is not None else []
        groups += [name for name in ROUTE_TASKS if getattr(self.api, name)]
        return tuple(groups)

    @property
    def api_port(self) -> int:
        return (
            self.api.openai.port if self.api is not None and self.api.openai is not None else DEFAULT_API_PORT
        )

    __rules__ = (
        Rule(
            cel=(
                "!has(self.triton) || self.triton.format != 'vllm' || (has(self.model.task) && "
                "self.model.task == 'text-generation' && has(self.resources) && self.resources.gpus >= 1)"
            ),
            message=(
                "spec.triton.format vllm needs spec.model.task text-generation and spec.resources.gpus >= 1"
            ),
            check=lambda s: (
                s.triton.format != ModelFormat.VLLM
                or (s.model.task == Task.TEXT_GENERATION and s.resources.gpus >= 1)
            ),
            field_path=".triton.format",
        ),
        Rule(
            cel=(
                "!has(self.triton) || self.triton.format != 'onnx' || !has(self.model.task) || "
                "self.model.task != 'text-generation'"
            ),
            message=(
                "spec.triton.format onnx supports encoder tasks only; use python or vllm for text-generation"
            ),
            check=lambda s: s.triton.format != ModelFormat.ONNX or s.model.task != Task.TEXT_GENERATION,
            field_path=".triton.format",
        ),
        Rule(
            cel=(
                "!has(self.triton) || !self.triton.responseCache || !has(self.model.task) || "
                "self.model.task != 'text-generation'"
            ),
            message="spec.triton.responseCache cannot be used with text-generation (a streaming model)",
            check=lambda s: not s.triton.response_cache or s.model.task != Task.TEXT_GENERATION,
            field_path=".triton.responseCache",
        ),
        Rule(
            cel=(
                "!has(self.triton) || self.triton.quantization != 'int8' || "
                "!has(self.resources) || self.resources.gpus == 0"
            ),
            message=(
                "spec.triton.quantization int8 runs on CPUs only (spec.resources.gpus 0): "
                "no GPU int8 path is measured yet; GPUs serve float16"
            ),
            check=lambda s: s.triton.quantization != Quantization.INT8 or s.resources.gpus == 0,
            field_path=".triton.quantization",
        ),
        Rule(
            cel=(
                "!has(self.triton) || self.triton.quantization != 'int8' || !has(self.model.task) || "
                "self.model.task != 'text-generation'"
            ),
            message=(
                "spec.triton.quantization int8 is for encoder tasks; text-generation is not measured with it "
                "(use dtype bfloat16 on a CPU that has it)"
            ),
            check=lambda s: (
                s.triton.quantization != Quantization.INT8 or s.model.task != Task.TEXT_GENERATION
            ),
            field_path=".triton.quantization",
        ),
        Rule(
            cel=(
                "!has(self.triton) || self.triton.dtype != 'float16' || "
                "(has(self.resources) && self.resources.gpus >= 1)"
            ),
            message=(
                "spec.triton.dtype float16 needs spec.resources.gpus >= 1; use float32 or bfloat16 on the CPU"
            ),
            check=lambda s: s.triton.dtype != DType.FLOAT16 or s.resources.gpus >= 1,
            field_path=".triton.dtype",
        ),
        _generation_metric_rule(
            AutoscalingMetric.RUNNING_SEQUENCES,
            "spec.model.task text-generation served by the python format (the runtime exports it)",
        ),
        _generation_metric_rule(
            AutoscalingMetric.GENERATION_PRESSURE,
            "engine keda (its scalingModifiers combine the signals) and spec.model.task text-generation "
            "served by the python format",
            keda=True,
        ),
        Rule(
            cel=(
                "!has(self.api) || !has(self.api.openai) || !self.api.openai.enabled || "
                "(has(self.model.task) && self.model.task in ['feature-extraction', 'text-generation'])"
            ),
            message=(
                "spec.api.openai needs spec.model.task set to feature-extraction (embeddings) or "
                "text-generation (completions and chat)"
            ),
            check=lambda s: s.openai is None or s.model.task in OPENAI_TASKS,
            field_path=".api.openai",
        ),
        Rule(
            cel=DEDICATED_ONLY_CEL,
            message=(
                "spec.server places the model on a shared ModelServer, which decides "
                f"{DEDICATED_ONLY_FIELDS}: leave spec.replicas at 1, spec.autoscaling, spec.resources, "
                "spec.cache, spec.api and spec.triton.cpuWaitPolicy unset (set them on the ModelServer)"
            ),
            check=_fits_shared_server,
            field_path=".server",
        ),
        *(_route_rule(name, tasks) for name, tasks in ROUTE_TASKS.items()),
    )
