"""The builders' side of docs/security.md: API keys mounted into the sidecar, Triton on the pod's loopback
unless exposed (and the Service without its ports then), Triton's administrative APIs restricted in every
pod, and the NetworkPolicy of spec.network. Every manifest validates strictly against Kubernetes 1.37."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
from md_fixtures import md_of

from modeldeploy.api import SpecError, parse_spec
from modeldeploy.manifests import DesiredState, desired_state
from modeldeploy.manifests.deployment import API_KEYS_MOUNT, RESTRICTED_APIS, TRITON_LAUNCHER
from modeldeploy.manifests.service import endpoints
from modeldeploy.settings import ClusterCapabilities, RenderSettings
from modeldeploy_dev.kubelet import container_command, expand, triton_command

SETTINGS = RenderSettings(triton_image="triton:test", builder_image="builder:test")
NOTHING = ClusterCapabilities(service_monitors=False, keda=False)
EMBEDDINGS = {
    "model": {"source": "hf://sentence-transformers/all-MiniLM-L6-v2", "task": "feature-extraction"}
}
OPENAI = {"api": {"openai": {"enabled": True, "port": 9100}}}
KEYED = {"api": {"openai": {"enabled": True, "port": 9100}, "auth": {"secretName": "model-keys"}}}


def _state(*parts: dict[str, Any]) -> DesiredState:
    state = desired_state(md_of(EMBEDDINGS, *parts), SETTINGS, NOTHING)
    for manifest in state.manifests():
        kubernetes_validate.validate(manifest, "1.37.0", strict=True)
    return state


def _containers(state: DesiredState) -> dict[str, dict[str, Any]]:
    pod = state.deployment["spec"]["template"]["spec"]
    return {container["name"]: container for container in pod["containers"]}


def _listen_args(container: dict[str, Any]) -> list[str]:
    return [arg for arg in container["args"] if arg.startswith(("--http-address", "--grpc-address"))]


def test_without_auth_triton_stays_exposed_as_before() -> None:
    state = _state(OPENAI)
    triton = _containers(state)["triton"]
    assert _listen_args(triton) == []
    assert {port["name"] for port in triton["ports"]} == {"http", "grpc", "metrics"}
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert {port["name"] for port in state.service["spec"]["ports"]} == {"http", "grpc", "metrics", "openai"}
    assert "--api-keys-dir" not in " ".join(_containers(state)["openai"]["args"])
    assert state.network_policy is None


def test_with_auth_triton_is_on_loopback_and_only_the_keyed_api_leaves_the_pod() -> None:
    state = _state(KEYED)
    containers = _containers(state)
    triton, sidecar = containers["triton"], containers["openai"]
    assert _listen_args(triton) == ["--http-address=127.0.0.1", "--grpc-address=127.0.0.1"]
    assert "--metrics-address=0.0.0.0" in triton["args"]  # else it follows the HTTP address
    # Nothing but metrics is declared, and the kubelet (which probes the pod's address) asks over exec.
    assert [port["name"] for port in triton["ports"]] == ["metrics"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = triton[probe]["exec"]["command"]
        assert command[:2] == ["python3", "-c"] and "http://127.0.0.1:8000/v2/health/" in command[2]
    assert [port["name"] for port in state.service["spec"]["ports"]] == ["metrics", "openai"]
    assert f"--api-keys-dir={API_KEYS_MOUNT}" in sidecar["args"]
    assert {"name": "api-keys", "mountPath": API_KEYS_MOUNT, "readOnly": True} in sidecar["volumeMounts"]
    volumes = state.deployment["spec"]["template"]["spec"]["volumes"]
    keys = next(volume for volume in volumes if volume["name"] == "api-keys")
    # Not optional: a pod without its keys waits for the Secret instead of serving unguarded.
    assert keys["secret"] == {"secretName": "model-keys", "defaultMode": 0o440}
    # The keys travel only as the mounted files: no key or Secret name in the environment.
    assert all("valueFrom" not in env for env in sidecar["env"])
    found = endpoints(md_of(EMBEDDINGS, KEYED))
    assert "http" not in found and "grpc" not in found and found["openai"].endswith(":9100/v1")


def test_exposing_triton_explicitly_wins_over_the_auth_default() -> None:
    state = _state(KEYED, {"api": {"exposeTriton": True}})
    assert _listen_args(_containers(state)["triton"]) == []
    assert {port["name"] for port in state.service["spec"]["ports"]} >= {"http", "grpc"}
    unkeyed = _state(OPENAI, {"api": {"exposeTriton": False}})
    assert len(_listen_args(_containers(unkeyed)["triton"])) == 2


def test_auth_and_a_hidden_triton_accept_a_sidecar_serving_only_tei_or_rerank() -> None:
    # No OpenAI API: TEI's routes alone are the sidecar, and the keys guard them.
    state = _state({"api": {"tei": True, "auth": {"secretName": "model-keys"}}})
    triton, sidecar = _containers(state)["triton"], _containers(state)["openai"]
    assert _listen_args(triton) == ["--http-address=127.0.0.1", "--grpc-address=127.0.0.1"]
    assert "--routes=tei" in sidecar["args"] and f"--api-keys-dir={API_KEYS_MOUNT}" in sidecar["args"]
    assert [port["name"] for port in state.service["spec"]["ports"]] == ["metrics", "openai"]
    ranking = {"model": {"source": "hf://cross-encoder/ms-marco-MiniLM-L6-v2", "task": "text-ranking"}}
    hidden = md_of(ranking, {"api": {"rerank": True, "exposeTriton": False}})
    found = endpoints(hidden)
    assert "http" not in found and found["rerank"].endswith(":9000")


@pytest.mark.parametrize(
    ("api", "message"),
    [
        ({"auth": {"secretName": "keys"}}, "spec.api.auth protects the sidecar's API"),
        ({"exposeTriton": False}, "spec.api.exposeTriton false leaves the sidecar as the only way in"),
        ({"openai": {"enabled": True}, "auth": {"secretName": "Not_A_Name"}}, "spec.api.auth.secretName"),
    ],
)
def test_api_settings_that_cannot_work_are_refused_naming_the_field(
    api: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec({**EMBEDDINGS, "api": api})
    assert message in str(refused.value)


def test_every_pod_restricts_tritons_administrative_apis_to_a_value_drawn_inside_the_container() -> None:
    for parts in ((), (OPENAI,), (KEYED,)):
        triton = _containers(_state(*parts))["triton"]
        assert triton["command"] == ["/bin/sh", "-c", TRITON_LAUNCHER, "tritonserver"]
    for api in ("model-repository", "shared-memory"):
        assert api in RESTRICTED_APIS.split(",")
    assert "model-config" not in RESTRICTED_APIS  # the sidecar reads the model's config over gRPC


@pytest.mark.skipif(shutil.which("od") is None, reason="needs coreutils' od")
def test_the_launcher_passes_the_args_through_and_draws_a_fresh_value_each_start() -> None:
    # What the kubelet runs, after its $(VAR) expansion turned `$$(` into `$(`; `echo` stands in for
    # tritonserver (the real server runs it in tests/model_repo/test_openai_auth.py and the demo).
    launcher = triton_command(_containers(_state())["triton"]).launcher
    assert "$$(" not in launcher[2] and "restricted=$(od " in launcher[2]
    script = launcher[2].replace("exec tritonserver", "exec echo")

    def run() -> list[str]:
        out = subprocess.run(
            [*launcher[:2], script, *launcher[3:], "--model-repository=/m", "--http-port=8000"],
            capture_output=True,
            text=True,
            check=True,
            env={"PATH": os.environ["PATH"]},
        ).stdout.split()
        return out

    first, second = run(), run()
    assert first[:2] == ["--model-repository=/m", "--http-port=8000"]
    http, grpc = first[2], first[3]
    assert http.startswith(f"--http-restricted-api={RESTRICTED_APIS}:modeldeploy-restricted=")
    value = http.rsplit("=", 1)[1]
    assert len(value) == 32 and int(value, 16) >= 0
    assert grpc == f"--grpc-restricted-protocol={RESTRICTED_APIS}:modeldeploy-restricted={value}"
    assert second[2] != http


@pytest.mark.parametrize(
    ("written", "expanded"),
    [
        ("a=$$(od -N1) && b=$(HOME)", "a=$(od -N1) && b=/home/x"),  # `$$(` is a literal `$(`
        ("$(UNSET) $ $$ $(", "$(UNSET) $ $ $("),  # an unknown name stays as written
        ("$$(HOME)", "$(HOME)"),
    ],
)
def test_the_kubelet_expansion_is_kubernetes_own(written: str, expanded: str) -> None:
    assert expand(written, {"HOME": "/home/x"}) == expanded


def test_the_triton_container_runs_its_launcher_or_the_binary_with_its_flags() -> None:
    triton = _containers(_state())["triton"]
    command = triton_command(triton)
    assert command.launcher[:2] == ["/bin/sh", "-c"] and command.launcher[3] == "tritonserver"
    assert command.flags == triton["args"] and any(f.startswith("--model-repository=") for f in command.flags)
    plain = triton_command({"command": ["tritonserver", "--strict-readiness=true"], "args": ["--a=1"]})
    assert plain.launcher == [] and plain.flags == ["--strict-readiness=true", "--a=1"]
    assert triton_command({"args": ["--a=$(X)"], "env": [{"name": "X", "value": "1"}]}).flags == ["--a=1"]


def test_any_container_runs_as_the_kubelet_expands_it() -> None:
    """The demo runs the builder init container through the same expansion as the Triton container."""
    pod = _state().deployment["spec"]["template"]["spec"]
    (builder,) = pod["initContainers"]
    run = container_command(builder)
    assert run.argv == [*builder.get("command", []), *builder.get("args", [])]  # nothing to expand
    assert run.env == {e["name"]: e["value"] for e in builder.get("env", []) if "value" in e}
    given = {
        "command": ["sh", "-c", "echo $(A) $$(B)"],
        "args": ["--x=$(A)", "--y=$(FROM_SECRET)"],
        "env": [{"name": "A", "value": "1"}, {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {}}}],
    }
    assert container_command(given).argv == ["sh", "-c", "echo 1 $(B)", "--x=1", "--y=$(FROM_SECRET)"]
    assert container_command(given).env == {"A": "1"}


# -------------------------------------------------------------------------------------- NetworkPolicy


def test_network_policy_defaults_to_the_models_namespace_on_the_serving_ports_only() -> None:
    policy = _state(OPENAI, {"network": {}}).network_policy
    assert policy is not None
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"]["modeldeploy.dev/name"] == "bert"
    assert spec["policyTypes"] == ["Ingress"] and "egress" not in spec  # egress left alone
    (serving,) = spec["ingress"]  # no monitoring namespace named: the metrics port is closed
    assert serving["from"] == [{"podSelector": {}}]
    assert [port["port"] for port in serving["ports"]] == [8000, 8001, 9100]


def test_network_policy_with_peers_monitoring_and_egress() -> None:
    network = {
        "allowFrom": [
            {"namespaceSelector": {"matchLabels": {"team": "search"}}},
            {
                "podSelector": {
                    "matchExpressions": [
                        {"key": "app.kubernetes.io/name", "operator": "In", "values": ["rag"]}
                    ]
                }
            },
        ],
        "monitoringNamespace": "monitoring",
        "egressTo": [{"cidr": "10.0.0.0/8"}, {"namespaceSelector": {"matchLabels": {"team": "storage"}}}],
    }
    policy = _state(KEYED, {"network": network}).network_policy
    assert policy is not None
    spec = policy["spec"]
    serving, metrics = spec["ingress"]
    assert serving["from"] == [
        {"namespaceSelector": {"matchLabels": {"team": "search"}}},
        {
            "podSelector": {
                "matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In", "values": ["rag"]}]
            }
        },
    ]
    # Triton is on loopback here: only the sidecar's port is a serving port.
    assert serving["ports"] == [{"protocol": "TCP", "port": 9100}]
    assert metrics == {
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "ports": [{"protocol": "TCP", "port": 8002}],
    }
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    dns, allowed = spec["egress"]
    assert {port["port"] for port in dns["ports"]} == {53}
    assert allowed["to"] == [
        {"ipBlock": {"cidr": "10.0.0.0/8"}},
        {"namespaceSelector": {"matchLabels": {"team": "storage"}}},
    ]


def test_an_empty_allow_list_closes_the_serving_ports() -> None:
    policy = _state(OPENAI, {"network": {"allowFrom": [], "monitoringNamespace": "mon"}}).network_policy
    assert policy is not None
    (metrics,) = policy["spec"]["ingress"]
    assert [port["port"] for port in metrics["ports"]] == [8002]


@pytest.mark.parametrize(
    ("network", "message"),
    [
        (
            {"allowFrom": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}]},
            "matchExpressions values must be non-empty for operator In",
        ),
        (
            {"allowFrom": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "Equals"}]}}]},
            "spec.network.allowFrom.0.podSelector.matchExpressions.0.operator",
        ),
        (
            {"allowFrom": [{"podSelector": {"matchLabels": {"bad key!": "x"}}}]},
            "spec.network.allowFrom.0.podSelector.matchLabels: 'bad key!' is not a label key",
        ),
        ({"allowFrom": [{}]}, "spec.network peers need namespaceSelector, podSelector or both"),
        ({"egressTo": [{"cidr": "10.0.0.0/33"}]}, "cidr must be an IPv4 or IPv6 CIDR"),
        ({"monitoringNamespace": "Not A Namespace"}, "spec.network.monitoringNamespace"),
    ],
)
def test_invalid_network_settings_are_refused_naming_the_field(network: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec({**EMBEDDINGS, "network": network})
    assert message in str(refused.value)
