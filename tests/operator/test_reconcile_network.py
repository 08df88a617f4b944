"""The NetworkPolicy of spec.network through the reconciler, on the in-memory FakeCluster: created,
owned, updated when the spec changes, converged without writes, pruned when spec.network goes (the real
API server's side is tests/e2e/test_network_policy_e2e.py)."""

from __future__ import annotations

from typing import Any

from test_reconcile_fast import MODEL, Fast

from modeldeploy.kinds import NETWORK_POLICY
from modeldeploy.labels import is_owned_by

EMBEDDINGS = {"source": MODEL["source"], "task": "feature-extraction"}


def _spec(network: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": EMBEDDINGS, "api": {"openai": {"enabled": True}}}
    if network is not None:
        spec["network"] = network
    return spec


def test_network_policy_is_created_owned_updated_converged_and_pruned() -> None:
    fast = Fast()
    fast.create("np", _spec(None))
    assert fast.reconcile("np").writes > 0
    assert fast.child(NETWORK_POLICY, "np") is None
    body = fast.create("np", _spec({"monitoringNamespace": "monitoring"}))
    fast.reconcile("np")
    policy = fast.child(NETWORK_POLICY, "np")
    assert policy is not None and is_owned_by(policy, body["metadata"]["uid"])
    assert len(policy["spec"]["ingress"]) == 2
    assert fast.reconcile("np").writes == 0  # converged: nothing to write
    fast.create("np", _spec({"allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}))
    fast.reconcile("np")
    policy = fast.child(NETWORK_POLICY, "np")
    assert policy is not None
    (serving,) = policy["spec"]["ingress"]
    assert serving["from"] == [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]
    fast.create("np", _spec(None))
    fast.reconcile("np")
    assert fast.child(NETWORK_POLICY, "np") is None


def test_a_model_behind_keys_is_ready_and_reported_at_its_api_not_at_triton() -> None:
    from md_fixtures import md_of
    from test_status import T0, conditions, deployment, digest_of, pod

    from modeldeploy.status import Observed, compute_status

    keyed = {"openai": {"enabled": True}, "auth": {"secretName": "keys"}}
    md = md_of({"model": EMBEDDINGS, "replicas": 2, "api": keyed})
    digest = digest_of(md)
    observed = Observed(digest=digest, deployment=deployment(digest), pods=[pod(digest), pod(digest)])
    status = compute_status(md, observed, None, T0)
    assert conditions(status)["Ready"] == ("True", "Serving")
    assert status.endpoints is not None and status.endpoints.http is None and status.endpoints.grpc is None
    assert status.endpoints.openai == "http://bert.ml.svc:9000/v1"
    ready = next(condition for condition in status.conditions or [] if condition.type == "Ready")
    assert ready.message == "model bert is served at http://bert.ml.svc:9000/v1"
