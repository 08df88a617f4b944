"""Write complete, explicit `config.pbtxt` files and check each against Triton's own ModelConfig schema."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from model_repo.errors import BuildError
from model_repo.options import Task


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's TYPE_* name
    dims: tuple[int, ...]
    optional: bool = False

    def render(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        optional = " optional: true" if self.optional else ""
        return f'  {{ name: "{self.name}" data_type: {self.data_type} dims: [ {dims} ]{optional} }}'


@dataclass(frozen=True)
class Warmup:
    name: str
    batch_size: int
    # input name -> (data type, dims, source) where source is `input_data_file: "x"` or `zero_data: true`
    inputs: Mapping[str, tuple[str, tuple[int, ...], str]]

    def render(self) -> str:
        inputs = []
        for input_name, (data_type, dims, source) in self.inputs.items():
            dim_text = ", ".join(str(d) for d in dims)
            value = f"data_type: {data_type} dims: [ {dim_text} ] {source}"
            inputs.append(f'    inputs {{ key: "{input_name}" value {{ {value} }} }}')
        body = "\n".join(inputs)
        return f'  {{\n    name: "{self.name}"\n    batch_size: {self.batch_size}\n{body}\n  }}'


@dataclass(frozen=True)
class EnsembleStep:
    model_name: str
    input_map: Mapping[str, str]  # composing model's tensor -> ensemble tensor
    output_map: Mapping[str, str]

    def render(self) -> str:
        lines = [f'    {{\n      model_name: "{self.model_name}"\n      model_version: -1']
        lines += [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in self.input_map.items()]
        lines += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in self.output_map.items()]
        return "\n".join(lines) + "\n    }"


@dataclass(frozen=True)
class ModelConfigSpec:
    name: str
    inputs: Sequence[Tensor]
    outputs: Sequence[Tensor]
    max_batch_size: int
    backend: str | None = None
    platform: str | None = None
    instance_kind: str | None = None  # KIND_CPU, KIND_GPU, KIND_MODEL; None for ensembles
    instance_count: int = 1
    dynamic_batching: bool = False
    max_queue_delay_us: int = 0
    preferred_batch_sizes: Sequence[int] = ()
    decoupled: bool = False
    response_cache: bool = False
    parameters: Mapping[str, str] = field(default_factory=dict)
    warmups: Sequence[Warmup] = ()
    ensemble_steps: Sequence[EnsembleStep] = ()
    default_model_filename: str | None = None
    extra: str = ""  # pre-rendered blocks, e.g. an optimization section

    def render(self) -> str:
        out = [f'name: "{self.name}"']
        if self.backend:
            out.append(f'backend: "{self.backend}"')
        if self.platform:
            out.append(f'platform: "{self.platform}"')
        if self.default_model_filename:
            out.append(f'default_model_filename: "{self.default_model_filename}"')
        out.append(f"max_batch_size: {self.max_batch_size}")
        out.append("input [\n" + ",\n".join(t.render() for t in self.inputs) + "\n]")
        out.append("output [\n" + ",\n".join(t.render() for t in self.outputs) + "\n]")
        if self.instance_kind:
            out.append(f"instance_group [ {{ kind: {self.instance_kind} count: {self.instance_count} }} ]")
        if self.dynamic_batching:
            preferred = ""
            if self.preferred_batch_sizes:
                preferred = (
                    " preferred_batch_size: [ " + ", ".join(map(str, self.preferred_batch_sizes)) + " ]"
                )
            out.append(
                f"dynamic_batching {{ max_queue_delay_microseconds: {self.max_queue_delay_us}{preferred} }}"
            )
        if self.decoupled:
            out.append("model_transaction_policy { decoupled: true }")
        if self.response_cache:
            out.append("response_cache { enable: true }")
        for key, value in self.parameters.items():
            out.append(
                f"parameters {{ key: {json.dumps(key)} value {{ string_value: {json.dumps(value)} }} }}"
            )
        if self.warmups:
            out.append("model_warmup [\n" + ",\n".join(w.render() for w in self.warmups) + "\n]")
        if self.ensemble_steps:
            steps = ",\n".join(s.render() for s in self.ensemble_steps)
            out.append(f"ensemble_scheduling {{\n  step [\n{steps}\n  ]\n}}")
        if self.extra:
            out.append(self.extra)
        return "\n".join(out) + "\n"


def task_outputs(task: Task, num_labels: int, hidden_size: int, top_k: int) -> list[Tensor]:
    """The I/O contract's outputs per task (the batch dimension excluded)."""
    if task is Task.TEXT_CLASSIFICATION:
        return [
            Tensor("LABEL", "TYPE_STRING", (1,)),
            Tensor("SCORE", "TYPE_FP32", (1,)),
            Tensor("SCORES", "TYPE_FP32", (num_labels,)),
        ]
    if task is Task.TEXT_RANKING:
        return [Tensor("SCORE", "TYPE_FP32", (1,))]
    if task is Task.TOKEN_CLASSIFICATION:
        return [Tensor("ENTITIES", "TYPE_STRING", (1,))]
    if task is Task.FEATURE_EXTRACTION:
        return [Tensor("EMBEDDING", "TYPE_FP32", (hidden_size,))]
    if task is Task.FILL_MASK:
        return [Tensor("TOKENS", "TYPE_STRING", (top_k,)), Tensor("SCORES", "TYPE_FP32", (top_k,))]
    return list(GENERATION_OUTPUTS)


def encoder_inputs(task: Task) -> list[Tensor]:
    """The python format's inputs per encoder task: one text per batch item, or a pair of texts (a
    cross-encoder's query and text; a classifier's optional second text, as NLI checkpoints take)."""
    if task is Task.TEXT_RANKING:
        return [Tensor("QUERY", "TYPE_STRING", (1,)), Tensor("TEXT", "TYPE_STRING", (1,))]
    text = Tensor("TEXT", "TYPE_STRING", (1,))
    if task is Task.TEXT_CLASSIFICATION:
        return [text, Tensor("TEXT_PAIR", "TYPE_STRING", (1,), optional=True)]
    return [text]


# Triton's LLM convention (vLLM backend, OpenAI frontend, GenAI-Perf): one contract for every format.
GENERATION_INPUTS: tuple[Tensor, ...] = (
    Tensor("text_input", "TYPE_STRING", (1,)),
    Tensor("stream", "TYPE_BOOL", (1,), optional=True),
    Tensor("max_tokens", "TYPE_INT32", (1,), optional=True),
    Tensor("temperature", "TYPE_FP32", (1,), optional=True),
    Tensor("top_p", "TYPE_FP32", (1,), optional=True),
    Tensor("seed", "TYPE_UINT64", (1,), optional=True),
    Tensor("stop", "TYPE_STRING", (-1,), optional=True),
    Tensor("stop_words", "TYPE_STRING", (-1,), optional=True),
    Tensor("exclude_input_in_output", "TYPE_BOOL", (1,), optional=True),
    Tensor("sampling_parameters", "TYPE_STRING", (1,), optional=True),
)
GENERATION_OUTPUTS: tuple[Tensor, ...] = (
    Tensor("text_output", "TYPE_STRING", (-1,)),
    Tensor("num_input_tokens", "TYPE_INT32", (1,)),
    Tensor("num_output_tokens", "TYPE_INT32", (1,)),
    # On the final response: why generation ended (stop, length) and which stop matched (empty at EOS).
    Tensor("finish_reason", "TYPE_STRING", (1,)),
    Tensor("stop_reason", "TYPE_STRING", (1,)),
    # When the request asks for logprobs: JSON, the tokens since the previous response.
    Tensor("logprobs", "TYPE_STRING", (1,)),
)


def validate_config(text: str, where: str) -> None:
    """Parse into tritonclient's ModelConfig protobuf; a config that doesn't parse is a builder bug."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise BuildError(
            f"internal error: generated {where} is not a valid Triton model config: {exc}"
        ) from exc
