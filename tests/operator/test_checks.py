"""Specs the API accepts but the operator cannot deploy are refused with messages naming the field."""

from __future__ import annotations

import pytest
from md_fixtures import BASE_SPEC, body_of, merged

from modeldeploy.api import SpecError, parse_model_deployment
from modeldeploy.checks import parse_for_reconcile


@pytest.mark.parametrize(
    ("fragment", "message"),
    [
        (
            {
                "autoscaling": {"maxReplicas": 3, "metric": "cpu", "target": "500m"},
                "resources": {"requests": {"cpu": 1}},
            },
            "spec.autoscaling.target must be a whole percentage with metric cpu",
        ),
        (
            {"autoscaling": {"maxReplicas": 3, "metric": "cpu"}},
            "spec.autoscaling.metric cpu needs spec.resources.requests.cpu",
        ),
        ({"autoscaling": {"maxReplicas": 3, "target": 0}}, "spec.autoscaling.target must be greater than 0"),
        (
            {"triton": {"format": "onnx", "dtype": "bfloat16"}},
            "spec.triton.dtype must be auto or float32 with spec.triton.format onnx",
        ),
        ({"model": {"source": "pvc://Not_A_Claim/x"}}, "spec.model.source: 'Not_A_Claim' is not a valid"),
    ],
)
def test_operator_rules(fragment: dict[str, object], message: str) -> None:
    body = body_of(merged(BASE_SPEC, fragment))
    parse_model_deployment(body)  # the API (and so the CRD) lets it through
    with pytest.raises(SpecError) as caught:
        parse_for_reconcile(body)
    assert any(m.startswith(message) for m in caught.value.messages), caught.value.messages


def test_api_errors_come_through_unchanged() -> None:
    body = body_of(merged(BASE_SPEC, {"resources": {"gpuProduct": "NVIDIA-A10"}}))
    with pytest.raises(SpecError) as from_api:
        parse_model_deployment(body)
    with pytest.raises(SpecError) as from_operator:
        parse_for_reconcile(body)
    assert from_operator.value.messages == from_api.value.messages
