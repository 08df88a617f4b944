"""generationPressure: queue depth and KV-cache use as one autoscaling signal, combined by KEDA's
scalingModifiers (tests/e2e/test_third_party_crds.py applies the ScaledObject to KEDA's real CRD)."""

from __future__ import annotations

from typing import Any

import pytest
from md_fixtures import md_of

from modeldeploy.api import SpecError
from modeldeploy.labels import Owner
from modeldeploy.manifests import desired_state
from modeldeploy.manifests.scaledobject import pressure_signal_query
from modeldeploy.settings import ClusterCapabilities, RenderSettings

SETTINGS = RenderSettings(triton_image="triton:test", builder_image="builder:test")
GENERATION = {"model": {"source": "hf://org/chat", "task": "text-generation"}}
PRESSURE = {"autoscaling": {"maxReplicas": 6, "metric": "generationPressure", "engine": "keda"}}


def test_both_signals_are_triggers_and_the_formula_takes_the_larger() -> None:
    md = md_of(GENERATION, PRESSURE)
    scaled_object = desired_state(
        md, SETTINGS, ClusterCapabilities(service_monitors=True, keda=True)
    ).scaled_object
    assert scaled_object is not None
    spec = scaled_object["spec"]
    assert [trigger["name"] for trigger in spec["triggers"]] == ["waiting", "kvcache"]
    owner = Owner("bert", md.metadata.namespace, "u-1")
    waiting, kvcache = spec["triggers"]
    assert waiting["metadata"]["query"] == pressure_signal_query("waiting", owner)
    assert waiting["metadata"]["query"].startswith("avg(modeldeploy_generation_requests_waiting{namespace=")
    assert kvcache["metadata"]["query"].startswith("avg(modeldeploy_generation_kv_cache_utilization{")
    assert (waiting["metadata"]["threshold"], kvcache["metadata"]["threshold"]) == ("4", "0.8")
    assert spec["advanced"]["scalingModifiers"] == {
        "formula": "max(waiting / 4, kvcache / 0.8)",
        "target": "1",
        "activationTarget": "0",
        "metricType": "Value",
    }
    # The rest of the ScaledObject is what every KEDA model gets.
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 6)
    custom = md_of(GENERATION, {"autoscaling": {**PRESSURE["autoscaling"], "target": "750m"}})
    custom_object = desired_state(custom, SETTINGS, ClusterCapabilities(keda=True)).scaled_object
    assert custom_object is not None
    assert custom_object["spec"]["advanced"]["scalingModifiers"]["target"] == "0.75"


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ({**GENERATION, "autoscaling": {**PRESSURE["autoscaling"], "engine": "hpa"}}, "needs engine keda"),
        (
            {"model": {"source": "hf://org/bert", "task": "text-classification"}, **PRESSURE},
            "text-generation",
        ),
        ({**GENERATION, **PRESSURE, "triton": {"format": "vllm"}, "resources": {"gpus": 1}}, "python format"),
    ],
)
def test_generation_pressure_is_refused_where_nothing_combines_or_exports_it(
    spec: dict[str, Any], why: str
) -> None:
    with pytest.raises((SpecError, ValueError), match=why):
        md_of(spec)
