"""examples/gitops/: the Argo CD and Flux health logic on ModelDeployment statuses, and the manifests'
references (paths, names, chart values) resolve."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from chart_helpers import ROOT, Helm
from gitops_health import GITOPS, argocd_health, argocd_health_script, flux_health, flux_health_exprs

from modeldeploy.api import API_VERSION, ModelDeploymentStatus, parse_model_deployment

SPEC = {"model": {"source": "hf://sentence-transformers/all-MiniLM-L6-v2", "task": "feature-extraction"}}
NOW = "2026-11-23T09:00:00Z"


def _condition(kind: str, status: str, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": NOW,
    }


def _model_deployment(generation: int, status: dict[str, Any] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": "minilm", "namespace": "models", "generation": generation, "uid": "1234"},
        "spec": SPEC,
    }
    if status is not None:
        # The samples must be statuses the API allows, not shapes made up for the test.
        ModelDeploymentStatus.model_validate(status)
        obj["status"] = status
    return obj


def _status(generation: int, phase: str, *conditions: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"observedGeneration": generation, "phase": phase, "conditions": list(conditions), **extra}


def _observed(
    generation: int, phase: str, *conditions: tuple[str, str, str, str], **extra: Any
) -> dict[str, Any]:
    """A ModelDeployment whose status (and each condition: type, status, reason, message) observed its
    current generation."""
    observed = [_condition(*condition, generation) for condition in conditions]
    return _model_deployment(generation, _status(generation, phase, *observed, **extra))


READY_MESSAGE = "2/2 replicas ready; model minilm served at http://minilm.models.svc:8000"
INVALID_MESSAGE = "spec.cache needs exactly one of claimName (an existing PVC) or size (a new PVC)"

# name -> (object, Argo CD status, a fragment of Argo CD's message, Flux status)
CASES: dict[str, tuple[dict[str, Any], str, str, str]] = {
    "just created, no status": (_model_deployment(1, None), "Progressing", "Waiting", "Error"),
    "status without conditions": (
        _model_deployment(1, {"observedGeneration": 1, "phase": "Pending"}),
        "Progressing",
        "Waiting for the modeldeploy operator",
        "InProgress",
    ),
    # The repository not built (yet): its condition and Ready give the same reason.
    **{
        case: (
            _observed(
                generation,
                phase,
                ("ModelRepositoryReady", "False", reason, detail),
                ("Ready", "False", reason, message),
            ),
            argo,
            message,
            flux,
        )
        for case, generation, phase, reason, detail, message, argo, flux in [
            (
                "building",
                1,
                "Building",
                "Building",
                "build job running",
                "building the model repository",
                "Progressing",
                "InProgress",
            ),
            (
                "build failed",
                4,
                "Failed",
                "BuildFailed",
                "checkpoint has no weights",
                "checkpoint has no weights",
                "Degraded",
                "Failed",
            ),
        ]
    },
    "ready": (
        _observed(
            2,
            "Ready",
            ("ModelRepositoryReady", "True", "Built", "repository built"),
            ("Available", "True", "MinimumReplicasAvailable", "2/2 replicas ready"),
            ("Ready", "True", "Ready", READY_MESSAGE),
            replicas=2,
            readyReplicas=2,
        ),
        "Healthy",
        READY_MESSAGE,
        "Current",
    ),
    "ready, but for the previous generation": (
        _model_deployment(3, _status(2, "Ready", _condition("Ready", "True", "Ready", READY_MESSAGE, 2))),
        "Progressing",
        "generation 3",
        "InProgress",
    ),
    "invalid spec": (
        _observed(1, "Failed", ("Ready", "False", "InvalidSpec", INVALID_MESSAGE)),
        "Degraded",
        INVALID_MESSAGE,
        "Failed",
    ),
    "degraded: pods not ready": (
        _observed(2, "Degraded", ("Ready", "False", "Unavailable", "0/2 replicas ready")),
        "Degraded",
        "0/2 replicas ready",
        "Failed",
    ),
    # The failure taxonomy (docs/operator.md, "When a model is not Ready"), with the phases the operator
    # gives them.
    **{
        f"failure: {reason}": (
            _observed(3, phase, ("Ready", "False", reason, message), reason=reason, message=message),
            "Degraded",
            message,
            "Failed",
        )
        for reason, phase, message in [
            ("Unschedulable", "Failed", "1 of 1 pods cannot be scheduled: 0/3 nodes are available"),
            ("ImagePullFailed", "Failed", "1 of 1 pods cannot pull an image: triton:typo"),
            ("ModelLoadFailed", "Failed", "1 of 1 pods fail to load the model: failed to load 'bert'"),
            ("OutOfMemory", "Failed", "1 of 1 pods run out of memory: OOMKilled at its memory limit"),
            ("QuotaExceeded", "Failed", "the ReplicaSet cannot create pods: exceeded quota: gpus"),
            ("CreateFailed", "Failed", "the ReplicaSet cannot create pods: violates PodSecurity"),
            ("CacheClaimPending", "Failed", 'cache claim x is Pending: storageclass "fast" not found'),
            (
                "RolloutStuck",
                "Degraded",
                "the new revision cannot come up; the previous revision still serves",
            ),
        ]
    },
    "waiting: claim not bound yet": (
        _observed(1, "Pending", ("Ready", "False", "CacheClaimPending", "cache claim x is Pending yet")),
        "Progressing",
        "cache claim x is Pending yet",
        "InProgress",
    ),
    "ready but autoscaler degraded": (
        _observed(
            1,
            "Degraded",
            ("Ready", "True", "Serving", "model minilm is served"),
            reason="FailedGetPodsMetric",
        ),
        "Healthy",
        "model minilm is served",
        "Current",
    ),
    "ready unknown": (
        _observed(1, "Deploying", ("Ready", "Unknown", "Reconciling", "")),
        "Progressing",
        "Reconciling",
        "InProgress",
    ),
    "conditions without Ready": (
        _observed(1, "Deploying", ("Available", "False", "Deploying", "0/1 ready")),
        "Progressing",
        "Ready condition",
        "InProgress",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_argocd_health_check(case: str) -> None:
    obj, expected_status, expected_message, _flux = CASES[case]
    status, message = argocd_health(obj)
    assert status == expected_status, (case, status, message)
    assert expected_message in message, (case, message)


@pytest.mark.parametrize("case", list(CASES))
def test_flux_health_expressions(case: str) -> None:
    obj, _argo, _message, expected = CASES[case]
    assert flux_health(obj) == expected, case


def test_health_logic_is_read_from_the_shipped_files() -> None:
    assert "obj.status" in argocd_health_script()
    assert set(flux_health_exprs()) == {"current", "failed"}


# ------------------------------------------------------------------------------------ manifests


def _docs(relative: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((GITOPS / relative).read_text()) if doc]


def test_example_model_deployment_is_valid() -> None:
    (example,) = _docs("models/minilm.yaml")
    parsed = parse_model_deployment(example)
    assert parsed.metadata.namespace == "models"


def test_argocd_applications_point_at_real_paths(helm: Helm) -> None:
    (operator,) = _docs("argocd/application-operator.yaml")
    (models,) = _docs("argocd/application-models.yaml")
    assert (ROOT / operator["spec"]["source"]["path"] / "Chart.yaml").is_file()
    # The values the Application passes must satisfy the chart's schema.
    assert helm.template(operator["spec"]["source"]["helm"]["valuesObject"]).returncode == 0
    (example,) = _docs("models/minilm.yaml")
    assert models["spec"]["destination"]["namespace"] == example["metadata"]["namespace"]
    assert (
        example["metadata"]["namespace"]
        in operator["spec"]["source"]["helm"]["valuesObject"]["watchNamespaces"]
    )
    assert "ServerSideApply=true" in models["spec"]["syncPolicy"]["syncOptions"]
    (config_map,) = _docs("argocd/argocd-cm-health.yaml")
    assert config_map["metadata"] == {
        "name": "argocd-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
    }


def test_flux_manifests_point_at_real_paths(helm: Helm) -> None:
    sources = {doc["metadata"]["name"]: doc for doc in _docs("flux/sources.yaml")}
    kustomizations = {doc["metadata"]["name"]: doc for doc in _docs("flux/kustomizations.yaml")}
    (release,) = _docs("flux/operator/helmrelease.yaml")
    operator = kustomizations["modeldeploy-operator"]["spec"]
    assert operator["sourceRef"]["name"] in sources
    assert (ROOT / operator["path"] / "helmrelease.yaml").is_file()
    chart = release["spec"]["chart"]["spec"]
    assert chart["sourceRef"]["name"] in sources
    assert (ROOT / chart["chart"] / "Chart.yaml").is_file()
    assert helm.template(release["spec"]["values"]).returncode == 0
    models = kustomizations["models"]["spec"]
    assert models["dependsOn"] == [{"name": "modeldeploy-operator"}]
    (example,) = _docs("models/minilm.yaml")
    assert {
        "apiVersion": example["apiVersion"],
        "kind": "ModelDeployment",
        "name": example["metadata"]["name"],
        "namespace": example["metadata"]["namespace"],
    } in models["healthChecks"]
