"""ModelDeployment bodies, and what a builder reports of them, for the operator's tests (imported by the test
modules)."""

from __future__ import annotations

import copy
from typing import Any

from modeldeploy.api import ModelDeployment
from modeldeploy.checks import parse_for_reconcile

BASE_SPEC: dict[str, Any] = {
    "model": {"source": "hf://google-bert/bert-base-uncased", "task": "text-classification"},
}
# The accuracy gate's report of an int8 text-classification build (status.modelRepository.accuracy), as a
# builder's termination message carries it.
ACCURACY: dict[str, Any] = {
    "optimisation": "int8 (dynamic, per-channel weights), 11 of 12 linear layers int8",
    "metric": "label_agreement",
    "value": 1.0,
    "floor": 0.98,
    "metrics": {"label_agreement": 1.0, "max_probability_difference": 0.01},
    "texts": 48,
}


def body_of(
    spec: dict[str, Any] | None = None,
    name: str = "bert",
    namespace: str = "ml",
    uid: str = "11111111-2222-3333-4444-555555555555",
    generation: int = 1,
) -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "generation": generation,
            "resourceVersion": "1",
        },
        "spec": copy.deepcopy(spec if spec is not None else BASE_SPEC),
    }


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    """A deep merge of spec fragments, later ones winning."""
    result: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = copy.deepcopy(value)
    return result


def md_of(*spec_parts: dict[str, Any], name: str = "bert", uid: str | None = "u-1") -> ModelDeployment:
    body = body_of(merged(BASE_SPEC, *spec_parts), name=name)
    if uid is None:
        del body["metadata"]["uid"]
    else:
        body["metadata"]["uid"] = uid
    return parse_for_reconcile(body)
