"""Parsing a ModelDeployment for reconciliation: the API's rules, plus the few the operator adds.

The API rules (`api.parse_model_deployment`) are the ones the CRD enforces at admission. The extra rules
here catch specs that the API accepts but that could never work; they report in the same style (each
message names its field) and end up in the same place: `Ready=False`, reason `InvalidSpec`.
"""

from __future__ import annotations

from typing import Any

from model_repo.options import DType, ModelFormat
from modeldeploy.api import (
    AutoscalingMetric,
    ModelDeployment,
    ModelDeploymentSpec,
    SpecError,
    parse_model_deployment,
)
from modeldeploy.manifests.common import pvc_source
from modeldeploy.names import is_dns_subdomain
from modeldeploy.quantity import parse_quantity


def operator_rules(spec: ModelDeploymentSpec) -> list[str]:
    """Messages for everything that passes the API's rules but cannot be deployed."""
    messages: list[str] = []
    autoscaling = spec.autoscaling
    if autoscaling is not None:
        target = parse_quantity(autoscaling.effective_target)
        if target <= 0:
            messages.append("spec.autoscaling.target must be greater than 0")
        if autoscaling.metric is AutoscalingMetric.CPU:
            if target != target.to_integral_value():
                messages.append("spec.autoscaling.target must be a whole percentage with metric cpu")
            requests = spec.resources.requests
            if requests is None or requests.cpu is None:
                messages.append(
                    "spec.autoscaling.metric cpu needs spec.resources.requests.cpu "
                    "(utilisation is measured against the request)"
                )
    if spec.triton.format is ModelFormat.ONNX and spec.triton.dtype not in (DType.AUTO, DType.FLOAT32):
        messages.append("spec.triton.dtype must be auto or float32 with spec.triton.format onnx")
    claim = pvc_source(spec.model.source)
    if claim is not None and not is_dns_subdomain(claim[0]):
        messages.append(f"spec.model.source: {claim[0]!r} is not a valid PersistentVolumeClaim name")
    return messages


def parse_for_reconcile(body: dict[str, Any]) -> ModelDeployment:
    """The ModelDeployment in `body`, or SpecError with every problem, each naming its field."""
    md = parse_model_deployment(body)
    messages = operator_rules(md.spec)
    if messages:
        raise SpecError(messages)
    return md
