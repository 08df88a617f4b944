"""The pure builders: every manifest validates strictly against Kubernetes 1.37's schemas, and says what
the spec asks for (placement, security, probes, rollout, autoscaling, cache)."""

from __future__ import annotations

import itertools
from typing import Any

import kubernetes_validate
import pytest
from md_fixtures import md_of

from modeldeploy.api import ModelDeployment
from modeldeploy.digest import repository_digest
from modeldeploy.labels import MODEL_DIGEST_ANNOTATION, NAME_LABEL, Owner
from modeldeploy.manifests import DesiredState, desired_state
from modeldeploy.manifests.common import GPU_TOLERATION
from modeldeploy.manifests.deployment import EXIT_TIMEOUT_SECONDS, TERMINATION_GRACE_SECONDS
from modeldeploy.manifests.horizontalpodautoscaler import POD_METRIC_NAMES
from modeldeploy.manifests.scaledobject import prometheus_query
from modeldeploy.settings import ClusterCapabilities, RenderSettings

# The newest Kubernetes the installed kubernetes-validate knows, at most the 1.37 the chart targets.
K8S_VERSION = "1.37.0"
# Not built-in kinds: kubernetes-validate has no schema for them (checked structurally below).
CRD_KINDS = {"ScaledObject", "ServiceMonitor"}
SETTINGS = RenderSettings(triton_image="triton:test", builder_image="builder:test")
EVERYTHING = ClusterCapabilities(service_monitors=True, keda=True)
LONG_NAME = "a" * 40 + "." + "b" * 80 + ".c-very-long.model-deployment-name-that-is-a-dns-subdomain"

PLACEMENT = {
    "cpu": {},
    "gpu": {"resources": {"gpus": 2, "gpuProduct": "NVIDIA-H100-80GB-HBM3"}},
}
AUTOSCALING = {
    "fixed": {"replicas": 3},
    "hpa": {"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "metric": "queueTime"}},
    "hpa-cpu": {
        "autoscaling": {"maxReplicas": 3, "metric": "cpu", "target": 60},
        "resources": {"requests": {"cpu": "1500m", "memory": "2Gi"}},
    },
    "keda": {
        "autoscaling": {
            "engine": "keda",
            "minReplicas": 0,
            "maxReplicas": 5,
            "scaleToZero": True,
            "metric": "pendingRequests",
        }
    },
}
CACHE = {
    "none": {},
    "new-claim": {"cache": {"size": "20Gi", "storageClassName": "fast-rwx"}},
    "existing-claim": {"cache": {"claimName": "shared-models"}},
}
NAMES = {"short": "bert", "long": LONG_NAME, "digit-first": "7b-chat"}


def _validate(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_the_pinned_kubernetes_version_is_the_newest_the_validator_knows_up_to_1_37() -> None:
    known = [v for v in kubernetes_validate.utils.all_versions() if v.startswith("1.")]
    newest = max(
        (v for v in known if tuple(map(int, v.split(".")[:2])) <= (1, 37)),
        key=lambda v: [*map(int, v.split("."))],
    )
    assert newest == K8S_VERSION


MATRIX = list(itertools.product(PLACEMENT, AUTOSCALING, CACHE, NAMES))


@pytest.mark.parametrize(("placement", "scaling", "cache", "name"), MATRIX, ids=["-".join(m) for m in MATRIX])
def test_every_manifest_validates_strictly(placement: str, scaling: str, cache: str, name: str) -> None:
    md = md_of(PLACEMENT[placement], AUTOSCALING[scaling], CACHE[cache], name=NAMES[name])
    state = desired_state(md, SETTINGS, EVERYTHING)
    kinds = [manifest["kind"] for manifest in state.manifests()]
    assert kinds.count("Deployment") == kinds.count("Service") == 1
    for manifest in state.manifests():
        if manifest["kind"] not in CRD_KINDS:
            _validate(manifest)
        _check_common(manifest, md)


def _check_common(manifest: dict[str, Any], md: ModelDeployment) -> None:
    metadata = manifest["metadata"]
    name = metadata["name"]
    # Names fit DNS-1035 labels (Services, Jobs' pod labels) for any valid ModelDeployment name.
    assert len(name) <= 63 and name[0].isalpha() and "." not in name, name
    labels = metadata["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "modeldeploy"
    assert labels["app.kubernetes.io/part-of"] == "modeldeploy"
    assert labels["app.kubernetes.io/name"] == "triton"
    assert len(labels[NAME_LABEL]) <= 63 and len(labels["app.kubernetes.io/instance"]) <= 63
    (reference,) = metadata["ownerReferences"]
    assert reference == {
        "apiVersion": "modeldeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "name": md.metadata.name,
        "uid": md.metadata.uid,
        "controller": True,
    }
    assert metadata["namespace"] == md.metadata.namespace


def _state(
    *parts: dict[str, Any], capabilities: ClusterCapabilities = EVERYTHING, **kwargs: Any
) -> DesiredState:
    return desired_state(md_of(*parts, **kwargs), SETTINGS, capabilities)


def _pod(state: DesiredState) -> dict[str, Any]:
    pod: dict[str, Any] = state.deployment["spec"]["template"]["spec"]
    return pod


def _triton(state: DesiredState) -> dict[str, Any]:
    container: dict[str, Any] = _pod(state)["containers"][0]
    return container


def test_the_cpu_wait_policy_reaches_tritons_environment_only_when_it_spins() -> None:
    # Unset means spin, the default; passive is the runtime's own default and needs no env at all, so
    # pods made when passive was the operator's default (stored in their spec) stay unchanged.
    spinning_env = [{"name": "GOMP_SPINCOUNT", "value": "10000"}]
    assert _triton(_state({}))["env"] == spinning_env
    assert _triton(_state({"triton": {"cpuWaitPolicy": "spin"}}))["env"] == spinning_env
    passive = _state({"triton": {"cpuWaitPolicy": "passive"}})
    assert "env" not in _triton(passive)
    # Only the pods change: the repository (its digest) is the same.
    assert _state({}).digest == passive.digest
    for manifest in _state({}).manifests():
        if manifest["kind"] not in CRD_KINDS:
            _validate(manifest)


def test_triton_container_is_locked_down_probed_and_configured() -> None:
    state = _state({"triton": {"responseCache": True}})
    triton = _triton(state)
    # tritonserver behind a shell that draws the restricted APIs' header value (test_security_builders.py).
    assert triton["command"][:2] == ["/bin/sh", "-c"] and triton["command"][3] == "tritonserver"
    args = triton["args"]
    assert args[:10] == [
        "--model-repository=/models/repository",
        "--strict-readiness=true",
        f"--exit-timeout-secs={EXIT_TIMEOUT_SECONDS}",
        "--allow-metrics=true",
        "--http-port=8000",
        "--grpc-port=8001",
        "--metrics-port=8002",
        "--log-format=ISO8601",
        "--disable-auto-complete-config",  # the builder's config.pbtxt is served exactly as written
        "--backend-config=python,shm-default-byte-size=16777216",
    ]
    assert args[10].startswith("--cache-config=local,size=")
    assert {(p["name"], p["containerPort"]) for p in triton["ports"]} == {
        ("http", 8000),
        ("grpc", 8001),
        ("metrics", 8002),
    }
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60, "too short for model loading"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    security = triton["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False and security["runAsNonRoot"] is True
    pod = _pod(state)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["terminationGracePeriodSeconds"] == TERMINATION_GRACE_SECONDS > EXIT_TIMEOUT_SECONDS
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"].endswith("Mi")
    assert {"name": "dshm", "mountPath": "/dev/shm"} in triton["volumeMounts"]
    rollout = state.deployment["spec"]["strategy"]
    assert rollout == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def test_no_response_cache_flag_without_the_response_cache() -> None:
    assert not any(arg.startswith("--cache-config") for arg in _triton(_state({}))["args"])


def test_gpus_become_limits_affinity_and_the_gpu_toleration() -> None:
    state = _state(
        {
            "resources": {
                "gpus": 2,
                "gpuProduct": "NVIDIA-A100-SXM4-80GB",
                "requests": {"cpu": 4, "memory": "16Gi"},
                "limits": {"memory": "24Gi"},
            }
        }
    )
    triton = _triton(state)
    assert triton["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi"},
        "limits": {"memory": "24Gi", "nvidia.com/gpu": "2"},
    }
    pod = _pod(state)
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {
            "matchExpressions": [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A100-SXM4-80GB"]}
            ]
        }
    ]
    assert GPU_TOLERATION in pod["tolerations"]
    # The builder needs no GPU.
    builder = pod["initContainers"][0]
    assert "nvidia.com/gpu" not in builder["resources"].get("limits", {})


def test_cpu_pods_get_no_gpu_anything() -> None:
    pod = _pod(_state({}))
    assert "affinity" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in str(pod)


def test_the_gpu_product_is_anded_into_every_user_node_selector_term() -> None:
    user_terms = [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]},
    ]
    state = _state(
        {
            "resources": {
                "gpus": 1,
                "gpuProduct": "NVIDIA-H100-80GB-HBM3",
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": user_terms}
                    }
                },
                "tolerations": [
                    {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
                ],
                "nodeSelector": {"pool": "inference"},
            }
        }
    )
    pod = _pod(state)
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert len(terms) == 2
    for term in terms:
        assert {
            "key": "nvidia.com/gpu.product",
            "operator": "In",
            "values": ["NVIDIA-H100-80GB-HBM3"],
        } in term["matchExpressions"]
    assert terms[1]["matchFields"] == user_terms[1]["matchFields"]
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        GPU_TOLERATION,
    ]
    assert pod["nodeSelector"] == {"pool": "inference"}
    _validate(state.deployment)


def test_builder_init_container_gets_every_flag_and_credentials_by_reference_only() -> None:
    spec = {
        "model": {
            "source": "hf://org/model",
            "revision": "v1.2",
            "task": "fill-mask",
            "credentialsSecret": "hf-token",
            "trustRemoteCode": True,
            "allowNewHead": True,
        },
        "triton": {
            "format": "onnx",
            "dtype": "float32",
            "maxBatchSize": 16,
            "dynamicBatching": {"maxQueueDelayMicroseconds": 100, "preferredBatchSizes": [4, 8]},
            "instancesPerDevice": 2,
            "maxSequenceLength": 128,
            "accuracyFloor": 0.95,
            "calibration": {"configMapName": "texts", "key": "en.txt"},
        },
        "resources": {"gpus": 1},
    }
    state = _state(spec)
    builder = _pod(state)["initContainers"][0]
    assert builder["image"] == "builder:test"
    assert builder["command"] == ["modeldeploy"]
    assert builder["args"] == [
        "build",
        "--source", "hf://org/model",
        "--revision", "v1.2",
        "--task", "fill-mask",
        "--format", "onnx",
        "--dtype", "float32",
        "--max-batch-size", "16",
        "--max-queue-delay-us", "100",
        "--preferred-batch-size", "4",
        "--preferred-batch-size", "8",
        "--instances-per-device", "2",
        "--max-sequence-length", "128",
        "--device", "gpu",
        "--no-response-cache",
        "--quantization", "none",
        "--accuracy-floor", "0.95",
        "--calibration-file", "/etc/modeldeploy/calibration/en.txt",
        "--trust-remote-code",
        "--allow-new-head",
        "--model-name", "bert",
        "--out", "/models/repository",
    ]  # fmt: skip
    assert builder["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert {"name": "calibration", "mountPath": "/etc/modeldeploy/calibration", "readOnly": True} in builder[
        "volumeMounts"
    ]
    assert {"name": "calibration", "configMap": {"name": "texts"}} in _pod(state)["volumes"]
    assert all("valueFrom" not in env and "TOKEN" not in env["name"] for env in builder["env"])
    triton = _triton(state)
    assert "envFrom" not in triton, "the server needs no credentials"
    assert all("valueFrom" not in env for env in triton["env"]), "the server needs no credentials"
    mount = next(m for m in triton["volumeMounts"] if m["name"] == "model-repository")
    assert mount["readOnly"] is True


def test_pvc_sources_are_mounted_read_only_into_the_builder() -> None:
    state = _state({"model": {"source": "pvc://checkpoints/bert/base"}})
    pod = _pod(state)
    builder = pod["initContainers"][0]
    assert {"name": "model-source", "mountPath": "/mnt/pvc/checkpoints", "readOnly": True} in builder[
        "volumeMounts"
    ]
    assert {
        "name": "model-source",
        "persistentVolumeClaim": {"claimName": "checkpoints", "readOnly": True},
    } in pod["volumes"]


def test_fixed_replicas_are_set_and_autoscaling_leaves_them_to_the_autoscaler() -> None:
    assert _state({"replicas": 3}).deployment["spec"]["replicas"] == 3
    assert "replicas" not in _state(AUTOSCALING["hpa"]).deployment["spec"]
    assert "replicas" not in _state(AUTOSCALING["keda"]).deployment["spec"]


@pytest.mark.parametrize("metric", ["queueTime", "queueComputeRatio", "pendingRequests"])
def test_hpa_uses_the_adapter_metric_names(metric: str) -> None:
    state = _state({"autoscaling": {"maxReplicas": 4, "metric": metric, "target": "250m"}})
    hpa = state.horizontal_pod_autoscaler
    assert hpa is not None and state.scaled_object is None
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bert"}
    (entry,) = hpa["spec"]["metrics"]
    assert entry["type"] == "Pods"
    assert (
        entry["pods"]["metric"]["name"]
        == {
            "queueTime": "modeldeploy_queue_time_us",
            "queueComputeRatio": "modeldeploy_queue_compute_ratio",
            "pendingRequests": "modeldeploy_pending_requests",
        }[metric]
    )
    assert entry["pods"]["target"] == {"type": "AverageValue", "averageValue": "250m"}
    assert set(POD_METRIC_NAMES.values()) >= {entry["pods"]["metric"]["name"]}


def test_hpa_cpu_is_a_resource_utilisation_metric_with_the_default_target() -> None:
    state = _state(
        {"autoscaling": {"maxReplicas": 4, "metric": "cpu"}, "resources": {"requests": {"cpu": 2}}}
    )
    hpa = state.horizontal_pod_autoscaler
    assert hpa is not None
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        }
    ]


def test_keda_scaled_object_queries_tritons_metrics_of_this_service() -> None:
    settings = RenderSettings(prometheus_url="http://prom.example:9090")
    md = md_of(
        {
            "autoscaling": {
                "engine": "keda",
                "minReplicas": 0,
                "maxReplicas": 3,
                "scaleToZero": True,
                "target": "1500m",
            }
        },
        name="chat",
    )
    state = desired_state(md, settings, EVERYTHING)
    scaled = state.scaled_object
    assert scaled is not None and state.horizontal_pod_autoscaler is None
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 3)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
    metadata = trigger["metadata"]
    assert metadata["serverAddress"] == "http://prom.example:9090"
    assert metadata["threshold"] == "1.5"
    assert all(isinstance(value, str) for value in metadata.values()), (
        "KEDA's trigger metadata is string-only"
    )
    query = metadata["query"]
    assert 'namespace="ml",service="chat"' in query
    assert "nv_inference_queue_duration_us" in query and "nv_inference_compute_infer_duration_us" in query


def test_keda_pending_requests_are_averaged_per_pod() -> None:
    state = _state(AUTOSCALING["keda"])
    assert state.scaled_object is not None
    (trigger,) = state.scaled_object["spec"]["triggers"]
    assert trigger["metricType"] == "AverageValue"
    owner = Owner("bert", "ml", "u")
    from modeldeploy.api import AutoscalingMetric

    assert trigger["metadata"]["query"] == prometheus_query(AutoscalingMetric.PENDING_REQUESTS, owner)
    assert trigger["metadata"]["query"].startswith("sum(nv_inference_pending_request_count{")


def test_service_monitor_only_when_the_cluster_has_its_crd() -> None:
    assert _state({}, capabilities=ClusterCapabilities(service_monitors=False)).service_monitor is None
    monitor = _state({}).service_monitor
    assert monitor is not None
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    service = _state({}).service
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()


def test_pod_disruption_budget_only_when_more_than_one_pod_may_run() -> None:
    assert _state({"replicas": 1}).pod_disruption_budget is None
    assert _state({"autoscaling": {"minReplicas": 1, "maxReplicas": 1}}).pod_disruption_budget is None
    budget = _state({"replicas": 2}).pod_disruption_budget
    assert budget is not None and budget["spec"]["maxUnavailable"] == 1
    assert _state(AUTOSCALING["keda"]).pod_disruption_budget is not None


def test_service_exposes_http_grpc_and_metrics_to_the_serving_pods() -> None:
    state = _state({})
    service = state.service
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http", 8000, "http"),
        ("grpc", 8001, "grpc"),
        ("metrics", 8002, "metrics"),
    ]
    template_labels = state.deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items()
    assert service["spec"]["selector"] == state.deployment["spec"]["selector"]["matchLabels"]


def test_cache_builds_in_a_job_named_by_the_digest_and_pods_mount_it_read_only() -> None:
    md = md_of(CACHE["new-claim"], {"model": {"credentialsSecret": "creds"}})
    state = desired_state(md, SETTINGS, EVERYTHING)
    digest = repository_digest(md.spec, md.metadata.name)
    claim, job = state.cache_claim, state.build_job
    assert claim is not None and job is not None
    assert claim["metadata"]["name"] == "bert-cache"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "20Gi"}},
        "storageClassName": "fast-rwx",
    }
    assert claim["metadata"]["labels"]["app.kubernetes.io/component"] == "model-builder"
    assert job["metadata"]["name"] == f"bert-build-{digest[:12]}"
    assert job["metadata"]["annotations"][MODEL_DIGEST_ANNOTATION] == digest
    job_pod = job["spec"]["template"]["spec"]
    (builder,) = job_pod["containers"]
    assert builder["args"][-2:] == ["--out", f"/cache/{digest}"]
    assert builder["envFrom"] == [{"secretRef": {"name": "creds"}}]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "bert-cache"}} in job_pod["volumes"]
    assert NAME_LABEL not in job["spec"]["template"]["metadata"]["labels"], (
        "builder pods are not serving pods"
    )

    pod = _pod(state)
    assert "initContainers" not in pod
    assert {
        "name": "model-cache",
        "persistentVolumeClaim": {"claimName": "bert-cache", "readOnly": True},
    } in pod["volumes"]
    triton = _triton(state)
    assert {"name": "model-cache", "mountPath": "/cache", "readOnly": True} in triton["volumeMounts"]
    assert f"--model-repository=/cache/{digest}" in triton["args"]


def test_an_existing_cache_claim_is_used_and_not_created() -> None:
    state = _state(CACHE["existing-claim"])
    assert state.cache_claim is None and state.build_job is not None
    volumes = state.build_job["spec"]["template"]["spec"]["volumes"]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "shared-models"}} in volumes


def test_the_pod_template_carries_the_repository_digest() -> None:
    md = md_of({})
    state = desired_state(md, SETTINGS, EVERYTHING)
    annotations = state.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {MODEL_DIGEST_ANNOTATION: repository_digest(md.spec, "bert")}
    assert state.digest == repository_digest(md.spec, "bert")


def test_offline_rendering_leaves_owner_references_out() -> None:
    state = desired_state(md_of({}, uid=None), SETTINGS, EVERYTHING)
    for manifest in state.manifests():
        assert "ownerReferences" not in manifest["metadata"]
        if manifest["kind"] not in CRD_KINDS:
            _validate(manifest)


def test_the_triton_image_can_be_overridden_per_model() -> None:
    assert _triton(_state({"triton": {"image": "nvcr.io/nvidia/tritonserver:25.01-py3"}}))["image"] == (
        "nvcr.io/nvidia/tritonserver:25.01-py3"
    )
    assert _triton(_state({}))["image"] == "triton:test"


GENERATION = {"model": {"source": "hf://org/chat", "task": "text-generation"}}


def test_running_sequences_scale_generation_models_through_the_adapter_and_keda() -> None:
    from modeldeploy.api import AutoscalingMetric

    hpa = _state(GENERATION, {"autoscaling": {"maxReplicas": 4, "metric": "runningSequences"}})
    assert hpa.horizontal_pod_autoscaler is not None
    (entry,) = hpa.horizontal_pod_autoscaler["spec"]["metrics"]
    assert entry["pods"]["metric"]["name"] == "modeldeploy_running_sequences"
    assert entry["pods"]["target"] == {"type": "AverageValue", "averageValue": "12"}
    keda = _state(
        GENERATION, {"autoscaling": {"maxReplicas": 4, "metric": "runningSequences", "engine": "keda"}}
    )
    assert keda.scaled_object is not None
    (trigger,) = keda.scaled_object["spec"]["triggers"]
    assert trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["query"] == prometheus_query(
        AutoscalingMetric.RUNNING_SEQUENCES, Owner("bert", "ml", "u")
    )
    assert trigger["metadata"]["query"].startswith("sum(modeldeploy_generation_sequences_running{")


def test_running_sequences_are_refused_for_encoders() -> None:
    from modeldeploy.api import SpecError

    with pytest.raises(
        (SpecError, ValueError), match=r"runningSequences needs spec\.model\.task text-generation"
    ):
        md_of({"autoscaling": {"maxReplicas": 4, "metric": "runningSequences"}})


def test_generation_limits_reach_the_builder() -> None:
    from modeldeploy.manifests.common import builder_arguments

    md = md_of(GENERATION, {"triton": {"maxConcurrentSequences": 8, "maxTokens": 256}})
    args = builder_arguments(md.spec, "chat", "/out")
    assert args[args.index("--max-concurrent-sequences") + 1] == "8"
    assert args[args.index("--max-tokens") + 1] == "256"
    assert "--max-tokens" not in builder_arguments(md_of().spec, "bert", "/out")


# -- the OpenAI-compatible sidecar (spec.api.openai) ---------------------------------------------------

OPENAI = {"api": {"openai": {"enabled": True}}}
EMBEDDINGS = {"model": {"source": "hf://org/encoder", "task": "feature-extraction"}}


@pytest.mark.parametrize(
    "api", [{}, {"api": {}}, {"api": {"openai": {}}}, {"api": {"openai": {"enabled": False}}}]
)
def test_no_openai_container_port_or_endpoint_unless_enabled(api: dict[str, Any]) -> None:
    from modeldeploy.manifests.service import endpoints

    md = md_of(GENERATION, api)
    state = desired_state(md, SETTINGS, EVERYTHING)
    containers = state.deployment["spec"]["template"]["spec"]["containers"]
    assert [container["name"] for container in containers] == ["triton"]
    assert "openai" not in [port["name"] for port in state.service["spec"]["ports"]]
    assert "openai" not in endpoints(md)


@pytest.mark.parametrize(("task", "cache"), [(GENERATION, CACHE["none"]), (EMBEDDINGS, CACHE["new-claim"])])
def test_enabled_openai_api_adds_a_locked_down_probed_sidecar_and_a_service_port(
    task: dict[str, Any], cache: dict[str, Any]
) -> None:
    from modeldeploy.manifests.deployment import repository_path
    from modeldeploy.manifests.service import endpoints

    md = md_of(task, cache, OPENAI, name="chat")
    state = desired_state(md, SETTINGS, EVERYTHING)
    _validate(state.deployment)
    _validate(state.service)
    pod = state.deployment["spec"]["template"]["spec"]
    triton, sidecar = pod["containers"]
    assert (triton["name"], sidecar["name"]) == ("triton", "openai")
    # The Triton runtime image runs it: no fourth image.
    assert sidecar["image"] == triton["image"] == "triton:test"
    assert sidecar["command"] == ["python3", "-m", "openai_frontend"]
    args = dict(arg.removeprefix("--").split("=", 1) for arg in sidecar["args"])
    assert args == {
        "model-repository": repository_path(md, repository_digest(md.spec, "chat")),
        "model-id": "chat",
        "triton-grpc": "127.0.0.1:8001",
        "host": "0.0.0.0",
        "port": "9000",
        "routes": "openai",
    }
    # It reads the repository Triton reads, read-only, and nothing else.
    assert sidecar["volumeMounts"] == [mount for mount in triton["volumeMounts"] if mount["name"] != "dshm"]
    assert all(mount["readOnly"] for mount in sidecar["volumeMounts"])
    assert sidecar["securityContext"] == triton["securityContext"]
    assert sidecar["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    assert "nvidia.com/gpu" not in str(sidecar["resources"])
    assert sidecar["ports"] == [{"name": "openai", "containerPort": 9000, "protocol": "TCP"}]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "openai"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "openai"}
    openai_port = state.service["spec"]["ports"][-1]
    assert (openai_port["name"], openai_port["port"], openai_port["targetPort"]) == ("openai", 9000, "openai")
    assert endpoints(md)["openai"] == "http://chat.ml.svc:9000/v1"


def test_the_openai_port_is_configurable_but_not_tritons() -> None:
    md = md_of(GENERATION, {"api": {"openai": {"enabled": True, "port": 9443}}})
    state = desired_state(md, SETTINGS, EVERYTHING)
    assert state.service["spec"]["ports"][-1]["port"] == 9443
    assert "--port=9443" in state.deployment["spec"]["template"]["spec"]["containers"][1]["args"]
    with pytest.raises(ValueError, match="must differ from Triton's ports"):
        md_of(GENERATION, {"api": {"openai": {"enabled": True, "port": 8001}}})


def test_cl100k_base_token_arrays_reach_the_sidecar_as_its_own_option() -> None:
    from model_repo.openai_frontend.__main__ import parse_args

    def sidecar_args(openai: dict[str, Any]) -> list[str]:
        state = desired_state(md_of(EMBEDDINGS, {"api": {"openai": openai}}), SETTINGS, EVERYTHING)
        args: list[str] = state.deployment["spec"]["template"]["spec"]["containers"][1]["args"]
        return args

    asked = sidecar_args({"enabled": True, "tokenArrays": "cl100k_base"})
    assert "--token-arrays=cl100k_base" in asked
    assert parse_args(asked).token_arrays == "cl100k_base"
    # The sidecar's default is the API's: not written, so that pods made before the field keep their template.
    for default in ({"enabled": True}, {"enabled": True, "tokenArrays": "model"}):
        args = sidecar_args(default)
        assert not any(arg.startswith("--token-arrays") for arg in args)
        assert parse_args(args).token_arrays == "model"


@pytest.mark.parametrize("task", [None, "text-classification", "fill-mask"])
def test_openai_api_needs_an_embedding_or_generation_task(task: str | None) -> None:
    model: dict[str, Any] = {"source": "hf://org/m"}
    if task is not None:
        model["task"] = task
    with pytest.raises(ValueError, match=r"spec\.api\.openai needs spec\.model\.task"):
        md_of({"model": model}, OPENAI)


RANKING = {"model": {"source": "hf://org/reranker", "task": "text-ranking"}}
CLASSIFICATION = {"model": {"source": "hf://org/nli", "task": "text-classification"}}


@pytest.mark.parametrize(
    ("task", "api", "routes", "found"),
    [
        (RANKING, {"rerank": True}, "rerank", {"rerank": "http://m.ml.svc:9000"}),
        (RANKING, {"rerank": True, "tei": True}, "rerank,tei", {"rerank", "tei"}),
        (CLASSIFICATION, {"classify": True}, "classify", {"classify": "http://m.ml.svc:9000/v1/classify"}),
        (
            EMBEDDINGS,
            {"openai": {"enabled": True, "port": 9100}, "tei": True},
            "openai,tei",
            {"openai", "tei"},
        ),
    ],
)
def test_api_route_groups_run_the_sidecar_with_those_routes_and_list_their_endpoints(
    task: dict[str, Any], api: dict[str, Any], routes: str, found: Any
) -> None:
    from modeldeploy.manifests.service import endpoints

    md = md_of(task, {"api": api}, name="m")
    state = desired_state(md, SETTINGS, EVERYTHING)
    _validate(state.deployment)
    sidecar = state.deployment["spec"]["template"]["spec"]["containers"][1]
    assert f"--routes={routes}" in sidecar["args"]
    port = api.get("openai", {}).get("port", 9000)
    assert f"--port={port}" in sidecar["args"] and state.service["spec"]["ports"][-1]["port"] == port
    listed = {
        key: value for key, value in endpoints(md).items() if key in ("openai", "rerank", "classify", "tei")
    }
    if isinstance(found, dict):
        assert listed == found
    else:
        assert set(listed) == found


@pytest.mark.parametrize(
    ("task", "api", "field"),
    [
        (GENERATION, {"rerank": True}, "rerank"),
        (EMBEDDINGS, {"rerank": True}, "rerank"),
        (RANKING, {"classify": True}, "classify"),
        (GENERATION, {"tei": True}, "tei"),
        ({"model": {"source": "hf://org/m", "task": "fill-mask"}}, {"tei": True}, "tei"),
    ],
)
def test_api_routes_are_refused_for_tasks_they_do_not_fit(
    task: dict[str, Any], api: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=rf"spec\.api\.{field} needs spec\.model\.task"):
        md_of(task, {"api": api})


def test_turning_the_openai_api_on_keeps_the_repository_digest() -> None:
    # The sidecar reads the same repository: enabling it must not rebuild the model.
    assert repository_digest(md_of(GENERATION).spec, "bert") == repository_digest(
        md_of(GENERATION, OPENAI).spec, "bert"
    )
