"""The calibration texts a spec names (spec.triton.calibration: a ConfigMap's key) count in the repository's
digest: editing them builds a new repository (a new build Job, new pods), as editing the spec does. On the
in-memory FakeCluster (modeldeploy_dev.fakecluster); the ConfigMap is edited as `kubectl apply` would."""

from __future__ import annotations

import asyncio
from typing import Any

from reconcile_contract import SETTINGS, SOURCE

from modeldeploy.api import ModelDeployment
from modeldeploy.digest import repository_digest
from modeldeploy.kinds import CONFIG_MAP, DEPLOYMENT, JOB, MODEL_DEPLOYMENT
from modeldeploy.labels import MODEL_DIGEST_ANNOTATION
from modeldeploy.reconcile import Reconciler
from modeldeploy_dev.fakecluster import FakeCluster

NAMESPACE = "models"
SPEC: dict[str, Any] = {
    "model": {"source": SOURCE, "task": "text-classification"},
    "triton": {"quantization": "int8", "calibration": {"configMapName": "texts", "key": "lines.txt"}},
}


def _texts(cluster: FakeCluster, lines: str) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "texts", "namespace": NAMESPACE},
    }
    cluster.create({**manifest, "data": {"lines.txt": lines}})


def _served_digest(cluster: FakeCluster, reconciler: Reconciler) -> str:
    asyncio.run(reconciler.reconcile(cluster.body(MODEL_DEPLOYMENT, NAMESPACE, "gated")))
    deployment = cluster.body(DEPLOYMENT, NAMESPACE, "gated")
    return str(deployment["spec"]["template"]["metadata"]["annotations"][MODEL_DIGEST_ANNOTATION])


def test_editing_the_calibration_texts_changes_the_digest() -> None:
    cluster = FakeCluster()
    reconciler = Reconciler(cluster, SETTINGS)
    cluster.create_model_deployment(NAMESPACE, "gated", SPEC)
    _texts(cluster, "one text\nanother text\n")
    first = _served_digest(cluster, reconciler)
    assert _served_digest(cluster, reconciler) == first, "the same texts keep the digest"
    _texts(cluster, "one text\nanother text\na third\n")
    second = _served_digest(cluster, reconciler)
    assert second != first
    _texts(cluster, "one text\nanother text\n")
    assert _served_digest(cluster, reconciler) == first, "the digest is of the content"


def test_with_a_cache_the_new_texts_get_their_own_build_job() -> None:
    cluster = FakeCluster()
    reconciler = Reconciler(cluster, SETTINGS)
    cluster.create_model_deployment(NAMESPACE, "gated", {**SPEC, "cache": {"size": "1Gi"}})
    _texts(cluster, "one text\n")
    asyncio.run(reconciler.reconcile(cluster.body(MODEL_DEPLOYMENT, NAMESPACE, "gated")))
    (first,) = cluster.names(JOB, NAMESPACE)
    _texts(cluster, "another text\n")
    asyncio.run(reconciler.reconcile(cluster.body(MODEL_DEPLOYMENT, NAMESPACE, "gated")))
    assert len(set(cluster.names(JOB, NAMESPACE)) - {first}) == 1


def test_without_the_configmap_the_digest_is_the_specs_alone() -> None:
    """No texts to read yet (the build will say so): the digest the spec alone gives, as `render` prints."""
    cluster = FakeCluster()
    reconciler = Reconciler(cluster, SETTINGS)
    body = cluster.create_model_deployment(NAMESPACE, "gated", SPEC)
    md = ModelDeployment.model_validate(body)
    assert _served_digest(cluster, reconciler) == repository_digest(md.spec, "gated")
    assert cluster.names(CONFIG_MAP, NAMESPACE) == []
