"""The API models accept good specs, fill defaults, and reject bad ones with a message naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from modeldeploy.api import (
    AutoscalingMetric,
    ModelDeploymentSpec,
    SpecError,
    parse_model_deployment,
    parse_spec,
)

GOOD: dict[str, Any] = {
    "model": {"source": "hf://sentence-transformers/all-MiniLM-L6-v2", "revision": "main"},
    "resources": {"gpus": 1, "gpuProduct": "NVIDIA-A100-SXM4-80GB"},
}


def with_changes(**changes: Any) -> dict[str, Any]:
    """GOOD with dotted-path changes applied, e.g. with_changes(**{"triton.maxBatchSize": 0})."""
    spec = copy.deepcopy(GOOD)
    for dotted, value in changes.items():
        node = spec
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return spec


def test_good_spec_gets_defaults() -> None:
    spec = parse_spec(GOOD)
    dumped = spec.dump()
    assert dumped["triton"]["format"] == "auto"
    # Batching left unset: the builder takes the device's measured defaults (model_repo.options).
    assert "maxBatchSize" not in dumped["triton"] and "instancesPerDevice" not in dumped["triton"]
    assert dumped["triton"]["dynamicBatching"]["maxQueueDelayMicroseconds"] == 0
    assert dumped["replicas"] == 1
    assert dumped["model"]["trustRemoteCode"] is False
    assert "autoscaling" not in dumped


def test_round_trip_is_stable() -> None:
    first = parse_spec(GOOD).dump()
    assert ModelDeploymentSpec.model_validate(first).dump() == first


def test_autoscaling_default_target() -> None:
    spec = parse_spec(with_changes(autoscaling={"maxReplicas": 4}))
    assert spec.autoscaling is not None
    assert spec.autoscaling.metric == AutoscalingMetric.QUEUE_COMPUTE_RATIO
    assert spec.autoscaling.effective_target == "500m"


def test_openai_token_arrays_are_the_models_ids_unless_cl100k_base_is_asked() -> None:
    from model_repo.openai_frontend.token_arrays import TokenArrays

    spec = with_changes(**{"model.task": "feature-extraction", "api.openai": {"enabled": True}})
    parsed = parse_spec(spec).api
    assert parsed is not None and parsed.openai is not None
    assert parsed.openai.token_arrays is TokenArrays.MODEL
    spec["api"]["openai"]["tokenArrays"] = "cl100k_base"
    asked = parse_spec(spec)
    assert asked.api is not None and asked.api.openai is not None
    assert asked.api.openai.token_arrays is TokenArrays.CL100K_BASE
    assert asked.dump()["api"]["openai"]["tokenArrays"] == "cl100k_base"
    assert parse_spec(asked.dump()) == asked


def test_whole_object_parses() -> None:
    md = parse_model_deployment(
        {
            "apiVersion": "modeldeploy.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "minilm", "namespace": "ml", "generation": 3},
            "spec": GOOD,
        }
    )
    assert md.metadata.name == "minilm"
    assert md.spec.resources.gpus == 1


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("missing model", {"replicas": 1}, "spec.model"),
    ("unknown scheme", with_changes(**{"model.source": "ftp://host/model"}), "spec.model.source"),
    ("path traversal", with_changes(**{"model.source": "file:///models/../etc"}), "spec.model.source"),
    ("revision with ..", with_changes(**{"model.revision": "main..dev"}), "spec.model.revision"),
    ("revision with space", with_changes(**{"model.revision": "my branch"}), "spec.model.revision"),
    (
        "revision on file source",
        {"model": {"source": "file:///models/x", "revision": "main"}},
        "spec.model.revision",
    ),
    ("unknown task", with_changes(**{"model.task": "translation"}), "spec.model.task"),
    (
        "bad secret name",
        with_changes(**{"model.credentialsSecret": "Not_A_Name"}),
        "spec.model.credentialsSecret",
    ),
    ("unknown format", with_changes(**{"triton.format": "tensorrt"}), "spec.triton.format"),
    ("batch size 0", with_changes(**{"triton.maxBatchSize": 0}), "spec.triton.maxBatchSize"),
    ("batch size 100000", with_changes(**{"triton.maxBatchSize": 100000}), "spec.triton.maxBatchSize"),
    (
        "preferred > max",
        with_changes(triton={"maxBatchSize": 8, "dynamicBatching": {"preferredBatchSizes": [4, 16]}}),
        "spec.triton.dynamicBatching.preferredBatchSizes",
    ),
    (
        "negative queue delay",
        with_changes(triton={"dynamicBatching": {"maxQueueDelayMicroseconds": -1}}),
        "spec.triton.dynamicBatching.maxQueueDelayMicroseconds",
    ),
    ("unknown dtype", with_changes(**{"triton.dtype": "int4"}), "spec.triton.dtype"),
    ("short max sequence", with_changes(**{"triton.maxSequenceLength": 2}), "spec.triton.maxSequenceLength"),
    (
        "vllm on cpu",
        {"model": {"source": "hf://gpt2/gpt2", "task": "text-generation"}, "triton": {"format": "vllm"}},
        "spec.triton.format",
    ),
    (
        "vllm for embeddings",
        with_changes(**{"triton.format": "vllm", "model.task": "feature-extraction"}),
        "spec.triton.format",
    ),
    (
        "onnx for generation",
        with_changes(**{"triton.format": "onnx", "model.task": "text-generation"}),
        "spec.triton.format",
    ),
    (
        "response cache on a streaming model",
        with_changes(**{"triton.responseCache": True, "model.task": "text-generation"}),
        "spec.triton.responseCache",
    ),
    (
        "float16 on cpu",
        {"model": {"source": "hf://a/b"}, "triton": {"dtype": "float16"}},
        "spec.triton.dtype",
    ),
    ("negative gpus", with_changes(**{"resources.gpus": -1}), "spec.resources.gpus"),
    (
        "gpu product without gpus",
        {"model": {"source": "hf://a/b"}, "resources": {"gpuProduct": "NVIDIA-A100-SXM4-80GB"}},
        "spec.resources.gpuProduct",
    ),
    (
        "bad cpu quantity",
        with_changes(**{"resources.requests": {"cpu": "two"}}),
        "spec.resources.requests.cpu",
    ),
    ("bad toleration effect", with_changes(**{"resources.tolerations": [{"effect": "Sometimes"}]}), "effect"),
    ("negative replicas", with_changes(replicas=-1), "spec.replicas"),
    (
        "max < min",
        with_changes(autoscaling={"minReplicas": 5, "maxReplicas": 2}),
        "spec.autoscaling.maxReplicas",
    ),
    ("autoscaling without max", with_changes(autoscaling={"minReplicas": 1}), "spec.autoscaling.maxReplicas"),
    (
        "scale to zero with hpa",
        with_changes(autoscaling={"minReplicas": 0, "maxReplicas": 2, "scaleToZero": True}),
        "spec.autoscaling.scaleToZero",
    ),
    (
        "min 0 without scale to zero",
        with_changes(autoscaling={"minReplicas": 0, "maxReplicas": 2, "engine": "keda"}),
        "spec.autoscaling.minReplicas",
    ),
    (
        "unknown metric",
        with_changes(autoscaling={"maxReplicas": 2, "metric": "gpu"}),
        "spec.autoscaling.metric",
    ),
    ("bad target", with_changes(autoscaling={"maxReplicas": 2, "target": "lots"}), "spec.autoscaling.target"),
    ("cache with both", with_changes(cache={"claimName": "c", "size": "10Gi"}), "spec.cache"),
    ("cache with neither", with_changes(cache={}), "spec.cache"),
    (
        "storage class without size",
        with_changes(cache={"claimName": "c", "storageClassName": "fast"}),
        "spec.cache.storageClassName",
    ),
    ("unknown field", with_changes(replicaz=2), "spec.replicaz"),
    (
        "unknown token-array ids",
        with_changes(
            **{
                "model.task": "feature-extraction",
                "api.openai": {"enabled": True, "tokenArrays": "o200k_base"},
            }
        ),
        "spec.api.openai.tokenArrays",
    ),
]


@pytest.mark.parametrize(("case", "spec", "field"), BAD, ids=[case for case, _, _ in BAD])
def test_bad_spec_names_the_field(case: str, spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    assert any(field in message for message in caught.value.messages), caught.value.messages


def test_table_is_big_enough() -> None:
    assert len(BAD) >= 15
