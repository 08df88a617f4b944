"""The NetworkPolicy of spec.network: who may reach the model's serving and metrics ports, and where its
pods may connect when egress is asked for (docs/security.md)."""

from __future__ import annotations

from typing import Any

from modeldeploy.api import EgressPeer, LabelSelector, ModelDeployment, Network, NetworkPeer
from modeldeploy.kinds import NETWORK_POLICY
from modeldeploy.labels import child_manifest, selector_labels
from modeldeploy.manifests.common import owner_of
from modeldeploy.manifests.deployment import GRPC_PORT, HTTP_PORT, METRICS_PORT

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
DNS_PORT = 53


def _selector(selector: LabelSelector) -> dict[str, Any]:
    return selector.dump()


def _peer(peer: NetworkPeer) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if isinstance(peer, EgressPeer) and peer.cidr is not None:
        return {"ipBlock": {"cidr": peer.cidr}}
    if peer.namespace_selector is not None:
        result["namespaceSelector"] = _selector(peer.namespace_selector)
    if peer.pod_selector is not None:
        result["podSelector"] = _selector(peer.pod_selector)
    return result


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def serving_ports(md: ModelDeployment) -> list[int]:
    """The ports clients call: the sidecar's, and Triton's HTTP and gRPC while they leave the pod."""
    ports = [HTTP_PORT, GRPC_PORT] if md.spec.triton_exposed else []
    if md.spec.api_routes:
        ports.append(md.spec.api_port)
    return ports


def _ingress(md: ModelDeployment, network: Network) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    # Default: the model's own namespace (a podSelector alone selects within the policy's namespace).
    peers = (
        network.allow_from if network.allow_from is not None else [NetworkPeer(pod_selector=LabelSelector())]
    )
    if peers:
        rules.append({"from": [_peer(peer) for peer in peers], "ports": _tcp(*serving_ports(md))})
    if network.monitoring_namespace is not None:
        monitoring = {
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: network.monitoring_namespace}}
        }
        rules.append({"from": [monitoring], "ports": _tcp(METRICS_PORT)})
    return rules


def _egress(network: Network) -> list[dict[str, Any]]:
    assert network.egress_to is not None
    dns = {
        "to": [{"namespaceSelector": {}}],
        "ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}],
    }
    rules = [dns]
    if network.egress_to:
        rules.append({"to": [_peer(peer) for peer in network.egress_to]})
    return rules


def build_network_policy(md: ModelDeployment) -> dict[str, Any]:
    network = md.spec.network
    assert network is not None
    owner = owner_of(md)
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": selector_labels(owner)},
        "policyTypes": ["Ingress"],
        # Every rule lists what it allows; a pod selected by a policy without a rule for a port is closed.
        "ingress": _ingress(md, network),
    }
    if network.egress_to is not None:
        spec["policyTypes"].append("Egress")
        spec["egress"] = _egress(network)
    return child_manifest(NETWORK_POLICY, owner, owner.names.network_policy, spec)
