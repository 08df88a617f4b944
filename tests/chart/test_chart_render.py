"""helm lint and helm template of the chart for several value sets; every rendered object is checked."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml
from chart_helpers import CHART, KUBE_MINOR_VERSION, KUBE_VERSION, RELEASE, RELEASE_NAMESPACE, ROOT, Helm
from rbac_contract import expected_rbac, grants_of

from modeldeploy.api import parse_model_deployment

FULLNAME = f"{RELEASE}-modeldeploy"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cluster-wide-peering": {"replicaCount": 3, "resyncSeconds": 300},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "namespaced-peering-monitoring": {
        "replicaCount": 2,
        "watchNamespaces": ["team-a"],
        "peering": {"name": "models"},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "prometheusAdapter": {"rules": {"enabled": True, "namespace": "monitoring", "window": "2m"}},
    },
    "overrides": {
        "image": {
            "repository": "registry.example.com/ml/operator",
            "digest": "sha256:" + "a" * 64,
            "pullPolicy": "Always",
        },
        "tritonImage": {"repository": "registry.example.com/ml/triton", "tag": "26.07-custom"},
        "builderImage": {"repository": "registry.example.com/ml/builder", "tag": "0.1.0-rc1"},
        "imagePullSecrets": [{"name": "registry"}],
        "healthPort": 18080,
        "metricsPort": 19090,
        "extraEnv": [{"name": "MODELDEPLOY_PROMETHEUS_URL", "value": "http://prometheus:9090"}],
        "serviceAccount": {"annotations": {"iam.example.com/role": "operator"}},
        "podAnnotations": {"example.com/team": "ml"},
        "podLabels": {"team": "ml"},
        "podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "modeldeploy"}},
                        },
                    }
                ]
            }
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "modeldeploy"}},
            }
        ],
        "priorityClassName": "system-cluster-critical",
        "metrics": {"service": {"enabled": False}},
    },
    "bring-your-own-rbac": {
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "platform-operator"},
        "replicaCount": 2,
        "peering": {"create": False},
    },
}


@pytest.fixture(scope="module", params=list(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, helm: Helm) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    values = VALUE_SETS[request.param]
    return values, helm.render(values)


def _only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [obj for obj in objects if obj["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {len(matches)}"
    return matches[0]


def _of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _crd_schema(name: str) -> dict[str, Any]:
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["metadata"]["name"] == name:
                schema: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
                return schema
    raise AssertionError(f"no CRD {name} in {CHART / 'crds'}")


# ---------------------------------------------------------------------------------------------- lint


@pytest.mark.parametrize("value_set", ["defaults", "namespaced-peering-monitoring", "overrides"])
def test_helm_lint_strict(helm: Helm, value_set: str) -> None:
    result = helm.run(
        "lint",
        str(CHART),
        "--strict",
        "--kube-version",
        KUBE_VERSION,
        "--values",
        str(helm.values_file(VALUE_SETS[value_set])),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


# ------------------------------------------------------------------------------------ every object


def test_every_rendered_object_is_valid(rendered: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    values, objects = rendered
    assert objects
    for obj in objects:
        kind = obj["kind"]
        if kind in {"KopfPeering", "ClusterKopfPeering"}:
            # Custom resources: checked against the CRD the chart ships for them.
            jsonschema.validate(obj, _crd_schema(f"{kind.lower()}s.kopf.dev"))
            assert obj["apiVersion"] == "kopf.dev/v1"
        elif kind == "ServiceMonitor":
            # No schema for monitoring.coreos.com here (the Prometheus operator's CRDs are not shipped);
            # test_service_monitor_scrapes_the_metrics_service checks what it points at.
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        else:
            # Strict: unknown fields fail too, for the Kubernetes version the chart targets.
            kubernetes_validate.validate(obj, f"{KUBE_MINOR_VERSION}.0", strict=True)
        metadata = obj["metadata"]
        assert len(metadata["name"]) <= 63 or kind in {"ClusterRole", "ClusterRoleBinding"}
        assert metadata["labels"]["app.kubernetes.io/part-of"] == "modeldeploy"
    names = [(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]) for obj in objects]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"
    # Namespaced objects without an explicit namespace would land wherever kubectl points.
    for obj in objects:
        if obj["kind"] not in {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}:
            assert obj["metadata"].get("namespace"), obj["metadata"]["name"]
    del values


def test_crds_are_valid_and_established_kinds() -> None:
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                kubernetes_validate.validate(doc, f"{KUBE_MINOR_VERSION}.0", strict=True)


def test_chart_crd_is_identical_to_the_generated_crd() -> None:
    generated = ROOT / "crds" / "modeldeploy.dev_modeldeployments.yaml"
    copy = CHART / "crds" / "modeldeploy.dev_modeldeployments.yaml"
    assert copy.read_bytes() == generated.read_bytes(), "run scripts/sync-chart-crds.sh"
    check = subprocess.run(
        ["bash", str(ROOT / "scripts" / "sync-chart-crds.sh"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


# ------------------------------------------------------------------------------------ the operator


def test_operator_pod_is_hardened(rendered: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    values, objects = rendered
    pod = _only(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    expected_uid = values.get("podSecurityContext", {"runAsUser": 1000}).get("runAsUser", 1000)
    assert pod["securityContext"].get("runAsUser") == expected_uid
    container = _container(objects)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "add" not in security["capabilities"]
    resources = container["resources"]
    assert resources.get("requests") and resources.get("limits"), resources
    assert {mount["mountPath"] for mount in container["volumeMounts"]} == {"/tmp"}


def test_operator_command_line_follows_the_cli_contract(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    values, objects = rendered
    deployment = _only(objects, "Deployment")
    container = _container(objects)
    args = container["args"]
    assert args[0] == "operator"
    watch = values.get("watchNamespaces", [])
    if watch:
        assert "--all-namespaces" not in args
        assert [args[i + 1] for i, arg in enumerate(args) if arg == "--namespace"] == watch
    else:
        assert "--all-namespaces" in args and "--namespace" not in args
    replicas = values.get("replicaCount", 1)
    assert deployment["spec"]["replicas"] == replicas
    if replicas > 1:
        assert "--standalone" not in args
        expected_peering = values.get("peering", {}).get("name") or FULLNAME
        assert args[args.index("--peering") + 1] == expected_peering
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    else:
        assert "--standalone" in args and "--peering" not in args
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    health_port = values.get("healthPort", 8080)
    metrics_port = values.get("metricsPort", 9090)
    assert args[args.index("--health-port") + 1] == str(health_port)
    assert args[args.index("--metrics-port") + 1] == str(metrics_port)
    if values.get("resyncSeconds"):
        assert args[args.index("--resync-seconds") + 1] == str(values["resyncSeconds"])
    else:
        assert "--resync-seconds" not in args
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"health": health_port, "metrics": metrics_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {item["name"]: item.get("value") for item in container["env"]}
    for key, env_name in (
        ("tritonImage", "MODELDEPLOY_TRITON_IMAGE"),
        ("builderImage", "MODELDEPLOY_BUILDER_IMAGE"),
    ):
        image = values.get(key, {})
        if image:
            assert env[env_name] == f"{image['repository']}:{image['tag']}"
    assert "POD_ID" in env
    for extra in values.get("extraEnv", []):
        assert env[extra["name"]] == extra["value"]


def test_default_images_are_the_documented_ones(helm: Helm) -> None:
    objects = helm.render({})
    container = _container(objects)
    env = {item["name"]: item.get("value") for item in container["env"]}
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = chart["appVersion"]
    assert container["image"] == f"ghcr.io/modeldeploy/operator:{version}"
    assert env["MODELDEPLOY_TRITON_IMAGE"] == f"ghcr.io/modeldeploy/triton-runtime:{version}"
    assert env["MODELDEPLOY_BUILDER_IMAGE"] == f"ghcr.io/modeldeploy/builder:{version}"
    # The operator's own defaults (used outside the chart) are the same images.
    from modeldeploy import settings

    assert env["MODELDEPLOY_TRITON_IMAGE"] == settings.DEFAULT_TRITON_IMAGE
    assert env["MODELDEPLOY_BUILDER_IMAGE"] == settings.DEFAULT_BUILDER_IMAGE


def test_image_digest_wins_over_tag(helm: Helm) -> None:
    objects = helm.render(VALUE_SETS["overrides"])
    assert _container(objects)["image"] == "registry.example.com/ml/operator@sha256:" + "a" * 64


def test_operator_accepts_the_chart_command_line(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    # click parses every option before it acts on --help, so an option `modeldeploy operator` does not
    # have fails here with "No such option" while a known one only prints the help.
    _values, objects = rendered
    args = _container(objects)["args"]
    result = subprocess.run(
        [str(Path(sys.executable).parent / "modeldeploy"), *args, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Usage" in result.stdout


# ------------------------------------------------------------------------------------------- RBAC


def _role_binding_subjects(binding: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(s["kind"], s["name"], s.get("namespace", "")) for s in binding["subjects"]]


def test_rbac_is_exactly_the_contract(rendered: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    values, objects = rendered
    if not values.get("rbac", {}).get("create", True):
        assert not [
            o for o in objects if o["kind"] in {"ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding"}
        ]
        assert not _of_kind(objects, "ServiceAccount")
        pod = _only(objects, "Deployment")["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == values["serviceAccount"]["name"]
        return
    watch = values.get("watchNamespaces", [])
    expected = expected_rbac(watch, peering=values.get("replicaCount", 1) > 1)
    service_account = _only(objects, "ServiceAccount")["metadata"]
    subject = ("ServiceAccount", service_account["name"], service_account["namespace"])
    assert service_account["namespace"] == RELEASE_NAMESPACE
    assert _only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == subject[1]

    cluster_role = _only(objects, "ClusterRole")
    assert grants_of(cluster_role["rules"]) == expected.cluster
    cluster_binding = _only(objects, "ClusterRoleBinding")
    assert cluster_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": cluster_role["metadata"]["name"],
    }
    assert _role_binding_subjects(cluster_binding) == [subject]

    roles = {role["metadata"]["namespace"]: role for role in _of_kind(objects, "Role")}
    bindings = {binding["metadata"]["namespace"]: binding for binding in _of_kind(objects, "RoleBinding")}
    assert set(roles) == set(expected.per_namespace) == set(bindings)
    for namespace, grants in expected.per_namespace.items():
        assert grants_of(roles[namespace]["rules"]) == grants, namespace
        binding = bindings[namespace]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[namespace]["metadata"]["name"],
        }
        assert _role_binding_subjects(binding) == [subject]


def test_peering_objects_match_the_peering_flag(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    values, objects = rendered
    peerings = _of_kind(objects, "KopfPeering") + _of_kind(objects, "ClusterKopfPeering")
    args = _container(objects)["args"]
    if "--peering" not in args or not values.get("peering", {}).get("create", True):
        assert not peerings
        return
    name = args[args.index("--peering") + 1]
    watch = values.get("watchNamespaces", [])
    if watch:
        assert sorted((p["kind"], p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings) == [
            ("KopfPeering", namespace, name) for namespace in sorted(watch)
        ]
    else:
        assert [(p["kind"], p["metadata"]["name"]) for p in peerings] == [("ClusterKopfPeering", name)]


# ------------------------------------------------------------------------------------- monitoring


def test_service_monitor_scrapes_the_metrics_service(helm: Helm) -> None:
    values = VALUE_SETS["namespaced-peering-monitoring"]
    objects = helm.render(values)
    monitor = _only(objects, "ServiceMonitor")
    service = _only(objects, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    assert set(monitor["metadata"]["labels"]) >= {"release"}
    (endpoint,) = monitor["spec"]["endpoints"]
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    assert port["targetPort"] == "metrics"
    # The Service reaches the operator pods.
    pod_labels = _only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_service_monitor_without_service_is_refused(helm: Helm) -> None:
    result = helm.template({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}})
    assert result.returncode != 0
    assert "metrics.serviceMonitor.enabled needs metrics.service.enabled" in result.stderr


def test_one_port_for_health_and_metrics_is_refused(helm: Helm) -> None:
    result = helm.template({"healthPort": 9090, "metricsPort": 9090})
    assert result.returncode != 0
    assert "healthPort and metricsPort must differ" in result.stderr


def _documented_formulas() -> dict[str, str]:
    readme = (CHART / "README.md").read_text()
    block = re.search(r"```promql\n(.*?)```", readme, re.S)
    assert block, "the chart README documents the adapter formulas in a promql block"
    formulas: dict[str, str] = {}
    name = ""
    for line in block.group(1).splitlines():
        if line.startswith("# "):
            name = line[2:].strip()
        elif line.strip():
            formulas[name] = line.strip()
    return formulas


def _normalised(query: str) -> str:
    return str(promql_parser.parse(query).prettify())


@pytest.mark.parametrize("window", ["1m", "2m"])
def test_adapter_rules_compute_the_documented_formulas(helm: Helm, window: str) -> None:
    objects = helm.render({"prometheusAdapter": {"rules": {"enabled": True, "window": window}}})
    config_map = _only(objects, "ConfigMap")
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    rules = {rule["name"]["as"]: rule for rule in config["rules"]}
    formulas = _documented_formulas()
    assert (
        set(rules)
        == set(formulas)
        == {
            "modeldeploy_queue_time_us",
            "modeldeploy_queue_compute_ratio",
            "modeldeploy_pending_requests",
            "modeldeploy_running_sequences",
        }
    )
    # The names the operator puts in its HPAs are the ones the adapter serves.
    from modeldeploy.manifests.horizontalpodautoscaler import POD_METRIC_NAMES

    assert set(POD_METRIC_NAMES.values()) == set(rules)
    for name, rule in rules.items():
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        series = promql_parser.parse(rule["seriesQuery"])
        assert isinstance(series, promql_parser.VectorSelector), rule["seriesQuery"]
        assert re.fullmatch(rule["name"]["matches"], str(series.name)), (name, rule["seriesQuery"])
        query = rule["metricsQuery"]
        # What prometheus-adapter substitutes for one pod's query.
        adapter_query = query.replace("<<.LabelMatchers>>", 'namespace="ml",pod="x"').replace(
            "<<.GroupBy>>", "pod"
        )
        promql_parser.parse(adapter_query)
        documented = formulas[name].replace("[1m]", f"[{window}]")
        assert _normalised(query.replace("{<<.LabelMatchers>>}", "").replace("<<.GroupBy>>", "pod")) == (
            _normalised(documented)
        ), name


# ------------------------------------------------------------------------------------------ NOTES


@pytest.fixture(scope="module")
def notes_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # `helm template` does not render NOTES.txt and `helm install --dry-run` needs a cluster, so a copy
    # of the chart renders NOTES.txt through `tpl`, with the same values and the same helpers.
    copy = tmp_path_factory.mktemp("notes") / "modeldeploy"
    shutil.copytree(CHART, copy)
    shutil.copy(CHART / "templates" / "NOTES.txt", copy / "notes-under-test.txt")
    (copy / "templates" / "notes-under-test.yaml").write_text(
        'notes: |\n  {{- tpl (.Files.Get "notes-under-test.txt") . | nindent 2 }}\n'
    )
    return copy


def test_notes_render_for_every_value_set(helm: Helm, notes_chart: Path) -> None:
    for name, values in VALUE_SETS.items():
        result = helm.run(
            "template",
            RELEASE,
            str(notes_chart),
            "--namespace",
            RELEASE_NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            "--values",
            str(helm.values_file(values)),
            "--show-only",
            "templates/notes-under-test.yaml",
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"
        notes = yaml.safe_load(result.stdout)["notes"]
        assert "<no value>" not in notes, name
        assert f"deployment/{FULLNAME}" in notes and f"-n {RELEASE_NAMESPACE}" in notes, name
        for namespace in values.get("watchNamespaces", []):
            assert namespace in notes, name
        # The ModelDeployment the notes tell users to apply is valid.
        example = re.search(r"<<'YAML'.*?\n(.*?)\n\s*YAML\n", notes, re.S)
        assert example, name
        parse_model_deployment(yaml.safe_load(textwrap.dedent(example.group(1))))
