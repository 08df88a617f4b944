"""The RBAC the operator needs: the contract between the operator, the Helm chart and the e2e tests.

`OPERATOR_RBAC` is the one list. The chart's rendered (Cluster)Roles must grant exactly this (see
test_chart_render.py); the e2e tests run the operator under the roles the chart installs, so a verb the
operator uses and the contract lacks fails there.

Scopes:
- "watched": needed in every namespace the operator watches; with all namespaces, cluster-wide.
- "cluster": cluster-scoped resources, always in the ClusterRole.
- "peering-cluster" / "peering-watched": kopf's peering objects, only with more than one replica; kopf
  uses the ClusterKopfPeering when it watches all namespaces and a KopfPeering per namespace otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Scope = Literal["watched", "cluster", "peering-cluster", "peering-watched"]

CRUD = ("get", "list", "watch", "create", "update", "patch", "delete")
READ = ("get", "list", "watch")


@dataclass(frozen=True)
class Permission:
    api_group: str
    resource: str
    verbs: tuple[str, ...]
    scope: Scope


# What the operator creates, changes and deletes for its models (every verb, in each watched namespace):
# (api group, resource).
MANAGED: tuple[tuple[str, str], ...] = (
    ("", "configmaps"),
    ("apps", "deployments"),
    ("", "services"),
    ("", "persistentvolumeclaims"),
    ("batch", "jobs"),
    ("autoscaling", "horizontalpodautoscalers"),
    ("policy", "poddisruptionbudgets"),
    ("networking.k8s.io", "networkpolicies"),
    ("keda.sh", "scaledobjects"),
    ("monitoring.coreos.com", "servicemonitors"),
    # A canary with traffic HTTPRoute (Gateway API).
    ("gateway.networking.k8s.io", "httproutes"),
)

OPERATOR_RBAC: tuple[Permission, ...] = (
    # Read only: the operator writes the status subresource, never the object (kopf writes no annotations).
    Permission("modeldeploy.dev", "modeldeployments", READ, "watched"),
    Permission("modeldeploy.dev", "modeldeployments/status", ("get", "patch", "update"), "watched"),
    # Shared servers (docs/packing.md): read, status written; their model lists are ConfigMaps (also read:
    # the calibration texts a spec names count in its repository's digest).
    Permission("modeldeploy.dev", "modelservers", READ, "watched"),
    Permission("modeldeploy.dev", "modelservers/status", ("get", "patch", "update"), "watched"),
    *(Permission(group, resource, CRUD, "watched") for group, resource in MANAGED),
    Permission("", "pods", READ, "watched"),
    # A running builder's progress reports are lines of its log (status.modelRepository.progress).
    Permission("", "pods/log", ("get",), "watched"),
    # list: the Events of an unbound cache claim say why (status reason CacheClaimPending).
    Permission("", "events", ("create", "patch", "list"), "watched"),
    Permission("events.k8s.io", "events", ("create", "patch"), "watched"),
    Permission("apiextensions.k8s.io", "customresourcedefinitions", READ, "cluster"),
    # The early placement warning: which GPU products and how many allocatable GPUs the nodes have.
    Permission("", "nodes", ("list",), "cluster"),
    Permission("kopf.dev", "clusterkopfpeerings", ("get", "list", "watch", "patch"), "peering-cluster"),
    Permission("kopf.dev", "kopfpeerings", ("get", "list", "watch", "patch"), "peering-watched"),
)

# (api group, resource) -> verbs
Grants = dict[tuple[str, str], frozenset[str]]


@dataclass(frozen=True)
class ExpectedRbac:
    cluster: Grants
    per_namespace: dict[str, Grants]


def expected_rbac(watch_namespaces: Iterable[str], peering: bool) -> ExpectedRbac:
    """What the operator must be granted when it watches `watch_namespaces` (empty: all)."""
    namespaces = list(watch_namespaces)
    cluster: Grants = {}
    watched: Grants = {}
    for permission in OPERATOR_RBAC:
        key = (permission.api_group, permission.resource)
        verbs = frozenset(permission.verbs)
        if permission.scope == "cluster":
            cluster[key] = verbs
        elif permission.scope == "watched":
            (watched if namespaces else cluster)[key] = verbs
        elif permission.scope == "peering-cluster" and peering and not namespaces:
            cluster[key] = verbs
        elif permission.scope == "peering-watched" and peering and namespaces:
            watched[key] = verbs
    return ExpectedRbac(cluster=cluster, per_namespace={namespace: dict(watched) for namespace in namespaces})


def grants_of(rules: Iterable[Mapping[str, Any]]) -> Grants:
    """Flatten PolicyRules into (group, resource) -> verbs. Wildcards and resourceNames are refused:
    the operator's roles name every group, resource and verb explicitly."""
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        if "nonResourceURLs" in rule or "resourceNames" in rule:
            raise ValueError(f"unexpected rule shape (nonResourceURLs/resourceNames): {rule}")
        groups, resources, verbs = rule["apiGroups"], rule["resources"], rule["verbs"]
        for value in (*groups, *resources, *verbs):
            if value == "*":
                raise ValueError(f"wildcard in rule {rule}")
        for group in groups:
            for resource in resources:
                grants.setdefault((group, resource), set()).update(verbs)
    return {key: frozenset(verbs) for key, verbs in grants.items()}
