"""The ModelServer kind and placing ModelDeployments on it, without a cluster: the generated CRD, the
admission rules (in their Python form; the API server runs the same CEL in tests/e2e), placement by the
memory each repository records, and the server's children (golden YAML, kubernetes-validate strict)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from modeldeploy.api import DEDICATED_ONLY_CEL, SpecError, parse_model_deployment, parse_spec
from modeldeploy.kinds import CONFIG_MAP, DEPLOYMENT, JOB, MODEL_DEPLOYMENT, MODEL_SERVER, POD
from modeldeploy.manifests.model_server import (
    build_model_list,
    build_server_deployment,
    build_server_pod_disruption_budget,
    build_server_service,
    model_endpoint,
    wants_server_pod_disruption_budget,
)
from modeldeploy.placed import serving_verdict
from modeldeploy.placement import AWAITING_BUILD, DOES_NOT_FIT, Candidate, desired_models, place
from modeldeploy.reconcile import Reconciler
from modeldeploy.server_api import GPU_MEMORY_BY_PRODUCT, parse_model_server, parse_server_spec
from modeldeploy.server_crd import FILE_NAME, build_server_crd, render_server_crd_yaml
from modeldeploy.server_reconcile import ServerReconciler, combine
from modeldeploy.settings import RenderSettings
from modeldeploy_dev.fakecluster import FakeCluster

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "model-server.yaml"
K8S_VERSION = "1.37.0"
GIB = 1 << 30
SERVER = {
    "apiVersion": "modeldeploy.dev/v1alpha1",
    "kind": "ModelServer",
    "metadata": {"name": "encoders", "namespace": "models", "uid": "u-1"},
    "spec": {
        "replicas": 2,
        "resources": {"gpus": 1, "gpuProduct": "NVIDIA-L4"},
        "cache": {"claimName": "shared-models"},
    },
}


def test_committed_server_crd_is_current_and_valid() -> None:
    for directory in (REPO / "crds", REPO / "charts" / "modeldeploy" / "crds"):
        assert (directory / FILE_NAME).read_text() == render_server_crd_yaml(), "run scripts/regenerate.py"
    kubernetes_validate.validate(build_server_crd(), K8S_VERSION, strict=True)
    columns = {c["name"] for c in build_server_crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Models", "Memory", "Ready"} <= columns


def test_capacity_defaults_from_a_known_gpu_product_and_is_required_otherwise() -> None:
    spec = parse_server_spec(SERVER["spec"])
    assert spec.capacity_bytes() == int(GPU_MEMORY_BY_PRODUCT["NVIDIA-L4"] * 0.9)
    assert parse_server_spec({**SERVER["spec"], "capacity": "10Gi"}).capacity_bytes() == 10 * GIB
    for resources in ({}, {"gpus": 1, "gpuProduct": "Some-Unknown-GPU"}):
        with pytest.raises(SpecError, match=r"spec.capacity is required unless spec.resources.gpuProduct"):
            parse_server_spec({"resources": resources, "cache": {"claimName": "c"}})


@pytest.mark.parametrize(
    "extra",
    [
        {"replicas": 3},
        {"autoscaling": {"maxReplicas": 2}},
        {"resources": {"gpus": 1}},
        {"cache": {"claimName": "c"}},
        {"api": {"openai": {"enabled": True}}},
        {"triton": {"cpuWaitPolicy": "spin"}},
    ],
    ids=["replicas", "autoscaling", "resources", "cache", "api", "cpu-wait-policy"],
)
def test_server_refuses_fields_only_a_dedicated_deployment_honours(extra: dict[str, Any]) -> None:
    base = {"model": {"source": "hf://org/m", "task": "feature-extraction"}, "server": {"name": "encoders"}}
    assert parse_spec(base).server is not None
    with pytest.raises(SpecError) as caught:
        parse_spec({**base, **extra})
    (message,) = [m for m in caught.value.messages if m.startswith("spec.server")]
    assert "replicas, autoscaling, resources, cache, api, rollout, network, triton.cpuWaitPolicy" in message
    # The CEL rule names each field too, so admission refuses the same specs.
    for field in (
        "self.replicas",
        "self.autoscaling",
        "self.resources",
        "self.cache",
        "self.api",
        "self.triton.cpuWaitPolicy",
    ):
        assert field in DEDICATED_ONLY_CEL


def test_a_placed_model_may_keep_the_passive_wait_policy_stored_when_passive_was_the_default() -> None:
    # The CRD used to default cpuWaitPolicy to passive, so placed models made then have it stored; the
    # rule must not refuse their next update. Only an explicit spin is refused (see above).
    base = {"model": {"source": "hf://org/m", "task": "feature-extraction"}, "server": {"name": "encoders"}}
    assert parse_spec({**base, "triton": {"cpuWaitPolicy": "passive"}}).server is not None
    assert "self.triton.cpuWaitPolicy == 'passive'" in DEDICATED_ONLY_CEL


def test_models_are_placed_first_come_while_their_recorded_memory_fits() -> None:
    candidates = [
        Candidate("late-big", "2026-01-03T00:00:00Z", "d3", 6 * GIB),
        Candidate("first", "2026-01-01T00:00:00Z", "d1", 3 * GIB),
        Candidate("second", "2026-01-02T00:00:00Z", "d2", 4 * GIB),
        Candidate("unbuilt", "2026-01-01T00:00:00Z", None, None),
        Candidate("small", "2026-01-04T00:00:00Z", "d4", 1 * GIB),
    ]
    placement = place("encoders", 8 * GIB, candidates)
    assert [c.name for c in placement.placed] == ["first", "second", "small"]
    assert placement.used_bytes == 8 * GIB
    reason, message = placement.refused["late-big"]
    assert reason == DOES_NOT_FIT
    assert "capacity 8.00 GiB, 7.00 GiB used (by first, second)" in message and "needs 6.00 GiB" in message
    assert placement.refused["unbuilt"][0] == AWAITING_BUILD
    assert desired_models(placement) == {
        "models": {
            "first": {"repository": "d1"},
            "second": {"repository": "d2"},
            "small": {"repository": "d4"},
        }
    }


def _children() -> list[dict[str, Any]]:
    server = parse_model_server(SERVER)
    placement = place("encoders", server.spec.capacity_bytes(), [Candidate("minilm", "t", "abc123", GIB)])
    settings = RenderSettings(triton_image="triton:golden", builder_image="builder:golden")
    children = [
        build_model_list(server, desired_models(placement)),
        build_server_deployment(server, settings),
        build_server_service(server),
    ]
    if wants_server_pod_disruption_budget(server):
        children.append(build_server_pod_disruption_budget(server))
    return children


def test_server_children_match_the_golden_yaml_and_validate() -> None:
    children = _children()
    text = yaml.safe_dump_all(children, sort_keys=False)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "server children changed; if on purpose, rerun with UPDATE_GOLDEN=1"
    for manifest in children:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    assert [c["kind"] for c in children] == ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"]


def test_server_pods_need_no_credentials_and_never_write_the_cache() -> None:
    config_map, deployment, *_ = _children()
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    containers = {c["name"]: c for c in pod["containers"]}
    assert "--model-control-mode=explicit" in containers["triton"]["args"]
    assert "--strict-readiness=true" not in containers["triton"]["args"]
    for container in containers.values():
        cache = [m for m in container["volumeMounts"] if m["name"] == "model-cache"]
        assert cache and all(m["readOnly"] for m in cache), container["name"]
    (claim,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"]["readOnly"] is True
    # The agent reads the list the operator writes, in the format model_set.read_desired reads.
    assert json.loads(config_map["data"]["models.json"]) == {"models": {"minilm": {"repository": "abc123"}}}


@pytest.mark.parametrize(
    ("resources", "triton", "expected"),
    [
        ({"gpus": 1, "gpuProduct": "NVIDIA-L4"}, {}, "KIND_GPU"),
        ({"requests": {"cpu": "4"}}, {}, "KIND_CPU"),
        ({"gpus": 1, "gpuProduct": "NVIDIA-L4"}, {"sharedRuntime": False}, None),
    ],
    ids=["gpu", "cpu", "own-stubs"],
)
def test_the_shared_runtime_runs_its_host_on_the_servers_device_unless_turned_off(
    resources: dict[str, Any], triton: dict[str, Any], expected: str | None
) -> None:
    spec = {**SERVER["spec"], "resources": resources, "triton": triton, "capacity": "10Gi"}
    server = parse_model_server({**SERVER, "spec": spec})
    settings = RenderSettings(triton_image="triton:golden", builder_image="builder:golden")
    pod = build_server_deployment(server, settings)["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    shared_args = [
        a for a in containers["agent"]["args"] if a.startswith(("--shared-runtime", "--host-kind"))
    ]
    mounts = {
        name: [m for m in c["volumeMounts"] if m["name"] == "shared-runtime"]
        for name, c in containers.items()
    }
    if expected is None:
        assert shared_args == [] and mounts == {"triton": [], "agent": []}
        assert all(v["name"] != "shared-runtime" for v in pod["volumes"])
        return
    assert shared_args == ["--shared-runtime=/served-shared", f"--host-kind={expected}"]
    # The agent writes the generated directories; Triton only reads them, at the same path.
    assert mounts["triton"] == [{"name": "shared-runtime", "mountPath": "/served-shared", "readOnly": True}]
    assert mounts["agent"] == [{"name": "shared-runtime", "mountPath": "/served-shared"}]


def test_the_servers_cpu_wait_policy_reaches_tritons_environment() -> None:
    settings = RenderSettings(triton_image="triton:golden", builder_image="builder:golden")
    for triton, env in (
        ({}, [{"name": "GOMP_SPINCOUNT", "value": "10000"}]),
        ({"cpuWaitPolicy": "spin"}, [{"name": "GOMP_SPINCOUNT", "value": "10000"}]),
        ({"cpuWaitPolicy": "passive"}, None),
    ):
        server = parse_model_server({**SERVER, "spec": {**SERVER["spec"], "triton": triton}})
        pod = build_server_deployment(server, settings)["spec"]["template"]["spec"]
        containers = {c["name"]: c for c in pod["containers"]}
        assert containers["triton"].get("env") == env
        assert "env" not in containers["agent"]


def test_a_placed_model_answers_at_the_server_service_under_its_own_name() -> None:
    endpoint = model_endpoint(parse_model_server(SERVER), "minilm")
    assert endpoint["http"] == "http://encoders.models.svc:8000/v2/models/minilm"
    assert endpoint["modelName"] == "minilm"


# -- reconcile on the FakeCluster ------------------------------------------------------------------------


class FixedStates:
    """What the server's Tritons report (on a real cluster: each pod's repository index, tests/e2e)."""

    def __init__(self) -> None:
        self.by_model: dict[str, tuple[str, str]] = {}

    async def states(self, pods: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
        return dict(self.by_model)


def _placed_model(cluster: Any, name: str, created: str, digest: str | None, memory: int | None) -> None:
    spec = {"model": {"source": "hf://org/m", "task": "feature-extraction"}, "server": {"name": "encoders"}}
    cluster.create_model_deployment("models", name, spec)
    cluster.set_status(
        MODEL_DEPLOYMENT, "models", name, {"modelRepository": {"digest": digest, "memoryBytes": memory}}
    )
    cluster.edit(MODEL_DEPLOYMENT, "models", name, {"metadata": {"creationTimestamp": created}})


def test_server_reconcile_places_lists_and_reports_each_model() -> None:
    cluster = FakeCluster()
    body = {**SERVER, "spec": {**SERVER["spec"], "capacity": "4Gi"}}
    cluster.create(body)
    server_body = cluster.body(MODEL_SERVER, "models", "encoders")
    _placed_model(cluster, "minilm", "2026-01-01T00:00:00Z", "d1", 1 * GIB)
    _placed_model(cluster, "ner", "2026-01-02T00:00:00Z", "d2", 2 * GIB)
    _placed_model(cluster, "huge", "2026-01-03T00:00:00Z", "d3", 3 * GIB)
    states = FixedStates()
    states.by_model = {"minilm": ("READY", ""), "ner": ("UNAVAILABLE", "failed to load 'ner': boom")}
    settings = RenderSettings(triton_image="triton:t", builder_image="builder:t")
    reconciler = ServerReconciler(cluster, settings, states)

    outcome = asyncio.run(reconciler.reconcile(server_body))
    assert cluster.names(DEPLOYMENT, "models") == ["encoders"], "one Deployment for all placed models"
    listed = json.loads(cluster.body(CONFIG_MAP, "models", "encoders-models")["data"]["models.json"])
    assert listed == {"models": {"minilm": {"repository": "d1"}, "ner": {"repository": "d2"}}}
    status = outcome.status.dump()
    assert status["modelSummary"] == "1/2" and status["memorySummary"] == "3.00 GiB/4.00 GiB"
    models = {m["name"]: m for m in status["models"]}
    assert models["ner"]["state"] == "UNAVAILABLE" and "boom" in models["ner"]["message"]
    assert models["huge"]["state"] == "InsufficientServerCapacity"
    assert (
        "capacity 4.00 GiB, 3.00 GiB used (by minilm, ner); this model needs 3.00 GiB"
        in models["huge"]["message"]
    )

    # Converged: a second round writes nothing.
    assert asyncio.run(reconciler.reconcile(server_body)).writes == 0
    # Deleting a model drops it from the list the agents load (they unload it).
    cluster.delete_now(MODEL_DEPLOYMENT, "models", "ner")
    outcome = asyncio.run(reconciler.reconcile(server_body))
    listed = json.loads(cluster.body(CONFIG_MAP, "models", "encoders-models")["data"]["models.json"])
    assert set(listed["models"]) == {"minilm", "huge"}, "freed memory places the waiting model"
    assert outcome.writes == 1


def test_eight_small_models_need_one_gpu_not_eight() -> None:
    """Issue 26's "8 models need one GPU": the GPUs a server asks for do not grow with its models, and
    with the shared runtime one process (the host) runs them all on it. That only the host loads torch
    and its CUDA libraries is checked with the real tritonserver (test_packing_serving.py)."""
    cluster = FakeCluster()
    cluster.create(SERVER)  # one NVIDIA L4 per replica; capacity from the product (0.9 of 24 GB)
    server_body = cluster.body(MODEL_SERVER, "models", "encoders")
    names = [f"encoder-{i}" for i in range(8)]
    for i, name in enumerate(names):
        # About what an fp16 MiniLM records: weights plus the activations of its max batch.
        _placed_model(cluster, name, f"2026-01-0{i + 1}T00:00:00Z", f"d{i}", 300 * 1024 * 1024)
    settings = RenderSettings(triton_image="triton:t", builder_image="builder:t")
    outcome = asyncio.run(ServerReconciler(cluster, settings, FixedStates()).reconcile(server_body))

    listed = json.loads(cluster.body(CONFIG_MAP, "models", "encoders-models")["data"]["models.json"])
    assert sorted(listed["models"]) == names, "all eight fit one GPU's capacity"
    assert outcome.status.dump()["memorySummary"] == "2.34 GiB/20.12 GiB"
    assert cluster.names(DEPLOYMENT, "models") == ["encoders"]
    pod = cluster.body(DEPLOYMENT, "models", "encoders")["spec"]["template"]["spec"]
    gpus = [c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") for c in pod["containers"]]
    assert gpus == ["1", None], "the Triton container asks for one GPU, the agent for none"
    (agent,) = [c for c in pod["containers"] if c["name"] == "agent"]
    assert "--host-kind=KIND_GPU" in agent["args"], "the shared host runs the models on that GPU"


def test_a_model_is_ready_only_where_every_replica_says_ready() -> None:
    one = [{"name": "a", "state": "READY"}, {"name": "b", "state": "READY"}]
    two = [{"name": "a", "state": "UNAVAILABLE", "reason": "load failed"}]
    assert combine([one, two]) == {
        "a": ("UNAVAILABLE", "load failed"),
        "b": ("LOADING", "not loaded in every replica yet"),
    }
    assert combine([one, one]) == {"a": ("READY", ""), "b": ("READY", "")}


def test_a_placed_model_is_built_into_the_server_cache_and_ready_only_when_loaded() -> None:
    cluster = FakeCluster()
    cluster.create({**SERVER, "spec": {**SERVER["spec"], "capacity": "1Gi"}})
    settings = RenderSettings(triton_image="triton:t", builder_image="builder:t")
    reconciler = Reconciler(cluster, settings)
    states = FixedStates()
    servers = ServerReconciler(cluster, settings, states)
    spec = {"model": {"source": "hf://org/m", "task": "feature-extraction"}, "server": {"name": "encoders"}}
    cluster.create_model_deployment("models", "minilm", spec)

    def reconcile_model() -> dict[str, Any]:
        asyncio.run(reconciler.reconcile(cluster.body(MODEL_DEPLOYMENT, "models", "minilm")))
        status: dict[str, Any] = cluster.body(MODEL_DEPLOYMENT, "models", "minilm")["status"]
        return status

    def reconcile_server() -> None:
        outcome = asyncio.run(servers.reconcile(cluster.body(MODEL_SERVER, "models", "encoders")))
        cluster.set_status(MODEL_SERVER, "models", "encoders", outcome.status.dump())

    status = reconcile_model()
    assert status["reason"] in ("Building", "Pending"), status
    assert cluster.names(DEPLOYMENT, "models") == [], "a placed model has no Deployment of its own"
    (job_name,) = cluster.names(JOB, "models")
    job = cluster.body(JOB, "models", job_name)
    volumes = job["spec"]["template"]["spec"]["volumes"]
    (claim,) = [v["persistentVolumeClaim"] for v in volumes if "persistentVolumeClaim" in v]
    assert claim["claimName"] == "shared-models", "built into the server's cache claim"
    builder_args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--device" in builder_args and builder_args[builder_args.index("--device") + 1] == "gpu"

    # The build succeeds and records what the model needs.
    cluster.set_status(
        JOB, "models", job_name, {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    )
    message = json.dumps({"memoryBytes": 300 * 1024 * 1024})
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{job_name}-x",
                "namespace": "models",
                "labels": {"batch.kubernetes.io/job-name": job_name},
            },
            "spec": {"containers": [{"name": "model-builder", "image": "builder:t"}]},
        }
    )
    cluster.set_status(
        POD,
        "models",
        f"{job_name}-x",
        {
            "phase": "Succeeded",
            "containerStatuses": [
                {"name": "model-builder", "state": {"terminated": {"exitCode": 0, "message": message}}}
            ],
        },
    )
    status = reconcile_model()
    assert status["modelRepository"]["memoryBytes"] == 300 * 1024 * 1024
    assert status["reason"] == "Placing"

    reconcile_server()
    status = reconcile_model()
    assert status["reason"] == "Loading" and status["phase"] == "Deploying"
    states.by_model = {"minilm": ("READY", "")}
    reconcile_server()
    status = reconcile_model()
    assert status["phase"] == "Ready" and status["reason"] == "Loaded"
    assert status["endpoints"]["http"] == "http://encoders.models.svc:8000/v2/models/minilm"

    # A second model that does not fit gets its own reason, naming the numbers.
    cluster.create_model_deployment("models", "big", spec)
    asyncio.run(reconciler.reconcile(cluster.body(MODEL_DEPLOYMENT, "models", "big")))
    assert len(cluster.names(JOB, "models")) == 2
    cluster.set_status(
        MODEL_DEPLOYMENT,
        "models",
        "big",
        {"modelRepository": {"digest": "d9", "memoryBytes": 900 * 1024 * 1024}},
    )
    reconcile_server()
    big = cluster.body(MODEL_SERVER, "models", "encoders")["status"]["models"]
    (entry,) = [m for m in big if m["name"] == "big"]
    assert entry["state"] == "InsufficientServerCapacity"
    verdict = serving_verdict(
        parse_model_deployment(cluster.body(MODEL_DEPLOYMENT, "models", "big")),
        cluster.body(MODEL_SERVER, "models", "encoders"),
    )
    assert verdict.reason == "InsufficientServerCapacity" and "needs 0.88 GiB" in verdict.message


def test_the_agent_runs_on_the_standard_library_alone(tmp_path: Path) -> None:
    """The Triton image has no project installed: the agent file must import nothing but the stdlib."""
    import shutil
    import subprocess
    import sys

    from model_repo import build, model_set

    assert model_set.RECORD_FILE == build.RECORD_FILE
    shutil.copy(model_set.__file__, tmp_path / "modeldeploy_agent.py")
    # -S and an empty environment: no site-packages, no PYTHONPATH; the standard library and the file.
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "modeldeploy_agent", "--help"],
        cwd=tmp_path,
        env={},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and "--desired" in proc.stdout, proc.stderr
