"""Pieces shared by the pod-creating builders: the builder container, security contexts, placement."""

from __future__ import annotations

import copy
from typing import Any

from model_repo.options import BuildOptions
from model_repo.triton_args import DEFAULT_CPU_WAIT_POLICY, CpuWaitPolicy, cpu_wait_environment
from modeldeploy.api import ModelDeployment, ModelDeploymentSpec, ResourceAmounts
from modeldeploy.digest import device
from modeldeploy.labels import GPU_PRODUCT_LABEL, GPU_RESOURCE, MODEL_BUILDER, Owner

GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
# The uid of the `triton-server` user in NVIDIA's images (and of the user in our own images).
RUN_AS_USER = 1000
SCRATCH_VOLUME = "scratch"
SCRATCH_PATH = "/scratch"
PVC_SOURCE_ROOT = "/mnt/pvc"
PVC_SOURCE_VOLUME = "model-source"
CALIBRATION_VOLUME = "calibration"
CALIBRATION_PATH = "/etc/modeldeploy/calibration"


def owner_of(md: ModelDeployment) -> Owner:
    return Owner(name=md.metadata.name, namespace=md.metadata.namespace, uid=md.metadata.uid)


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        # Lets the non-root builder write to the cache volume.
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def triton_environment(policy: CpuWaitPolicy | None) -> dict[str, Any]:
    """The Triton container's `env` for spec.triton.cpuWaitPolicy (unset: the default); nothing for
    passive, so that pods made when passive was the default stay as they are."""
    variables = cpu_wait_environment(policy or DEFAULT_CPU_WAIT_POLICY)
    return {"env": [{"name": name, "value": value} for name, value in variables.items()]} if variables else {}


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "privileged": False,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _amounts(amounts: ResourceAmounts | None) -> dict[str, str]:
    if amounts is None:
        return {}
    return {key: str(value) for key, value in amounts.dump().items()}


def container_resources(spec: ModelDeploymentSpec, with_gpus: bool) -> dict[str, Any]:
    requests = _amounts(spec.resources.requests)
    limits = _amounts(spec.resources.limits)
    if with_gpus and spec.resources.gpus > 0:
        # Extended resources are limits only; the request defaults to the limit.
        limits[GPU_RESOURCE] = str(spec.resources.gpus)
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def pvc_source(source: str) -> tuple[str, str] | None:
    """(claim, path inside it) of a pvc:// source, else None."""
    if not source.startswith("pvc://"):
        return None
    claim, _, path = source[len("pvc://") :].partition("/")
    return claim, path


def build_options(spec: ModelDeploymentSpec, model_name: str) -> BuildOptions:
    """What the builder is asked to build for this spec (the calibration ConfigMap's key as mounted)."""
    triton = spec.triton
    return BuildOptions(
        source=spec.model.source,
        revision=spec.model.revision,
        task=spec.model.task,
        format=triton.format,
        dtype=triton.dtype,
        max_batch_size=triton.max_batch_size,
        max_queue_delay_us=triton.dynamic_batching.max_queue_delay_microseconds,
        preferred_batch_sizes=tuple(triton.dynamic_batching.preferred_batch_sizes or ()),
        instances_per_device=triton.instances_per_device,
        max_sequence_length=triton.max_sequence_length,
        device=device(spec),
        response_cache=triton.response_cache,
        trust_remote_code=spec.model.trust_remote_code,
        model_name=model_name,
        allow_new_head=spec.model.allow_new_head,
        quantization=triton.quantization,
        accuracy_floor=triton.accuracy_floor,
        calibration_file=(
            f"{CALIBRATION_PATH}/{triton.calibration.key}" if triton.calibration is not None else None
        ),
        max_concurrent_sequences=triton.max_concurrent_sequences,
        max_tokens=triton.max_tokens,
    )


def builder_arguments(spec: ModelDeploymentSpec, model_name: str, out: str) -> list[str]:
    """`modeldeploy build` flags for this spec: its BuildOptions as the builder's CLI spells them."""
    stall = spec.model.download_stall_seconds
    stall_args = ["--stall-timeout", str(stall)] if stall is not None else []
    return ["build", *build_options(spec, model_name).to_args(), *stall_args, "--out", out]


def builder_container(
    spec: ModelDeploymentSpec,
    image: str,
    model_name: str,
    out: str,
    output_mount: dict[str, Any],
) -> dict[str, Any]:
    """The container that runs `modeldeploy build` (an init container, or the cache Job's container)."""
    mounts = [output_mount, {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_PATH}]
    pvc = pvc_source(spec.model.source)
    if pvc is not None:
        mounts.append(
            {"name": PVC_SOURCE_VOLUME, "mountPath": f"{PVC_SOURCE_ROOT}/{pvc[0]}", "readOnly": True}
        )
    if spec.triton.calibration is not None:
        mounts.append({"name": CALIBRATION_VOLUME, "mountPath": CALIBRATION_PATH, "readOnly": True})
    container: dict[str, Any] = {
        "name": MODEL_BUILDER,
        "image": image,
        "command": ["modeldeploy"],
        "args": builder_arguments(spec, model_name, out),
        "env": [
            # Downloads and library caches go to scratch space, never to the image's read-only home.
            {"name": "HOME", "value": SCRATCH_PATH},
            {"name": "HF_HOME", "value": f"{SCRATCH_PATH}/huggingface"},
            {"name": "MODELDEPLOY_PVC_ROOT", "value": PVC_SOURCE_ROOT},
            # The build's outcome (its error, or the accuracy gate's result) becomes the container's
            # termination message, which the operator reads into the status.
            {"name": "MODELDEPLOY_TERMINATION_MESSAGE", "value": "/dev/termination-log"},
        ],
        "resources": container_resources(spec, with_gpus=False),
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        # A failed build's last log lines (the builder's error) become the status message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.model.credentials_secret:
        # Referenced, never copied: the Secret's keys (HF_TOKEN, AWS_*, ...) become the environment.
        container["envFrom"] = [{"secretRef": {"name": spec.model.credentials_secret}}]
    return container


def builder_volumes(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": SCRATCH_VOLUME, "emptyDir": {}}]
    pvc = pvc_source(spec.model.source)
    if pvc is not None:
        volumes.append(
            {"name": PVC_SOURCE_VOLUME, "persistentVolumeClaim": {"claimName": pvc[0], "readOnly": True}}
        )
    if spec.triton.calibration is not None:
        volumes.append(
            {"name": CALIBRATION_VOLUME, "configMap": {"name": spec.triton.calibration.config_map_name}}
        )
    return volumes


def affinity(spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """The user's affinity, with the GPU product requirement ANDed into every node selector term."""
    merged: dict[str, Any] = copy.deepcopy(spec.resources.affinity or {})
    product = spec.resources.gpu_product
    if product:
        requirement = {"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [product]}
        node_affinity = merged.setdefault("nodeAffinity", {})
        required = node_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
        terms = required.setdefault("nodeSelectorTerms", [])
        if not terms:
            terms.append({"matchExpressions": [requirement]})
        for term in terms:
            expressions = term.setdefault("matchExpressions", [])
            if requirement not in expressions:
                expressions.append(requirement)
    return merged or None


def tolerations(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    result = [toleration.dump() for toleration in spec.resources.tolerations or []]
    if spec.resources.gpus > 0 and GPU_TOLERATION not in result:
        result.append(dict(GPU_TOLERATION))
    return result


def placement(spec: ModelDeploymentSpec, with_gpus: bool) -> dict[str, Any]:
    """nodeSelector, affinity and tolerations of a pod spec."""
    result: dict[str, Any] = {}
    if spec.resources.node_selector:
        result["nodeSelector"] = dict(spec.resources.node_selector)
    if with_gpus:
        merged = affinity(spec)
        if merged:
            result["affinity"] = merged
        listed = tolerations(spec)
        if listed:
            result["tolerations"] = listed
    else:
        # The builder needs no GPU, but the user's placement rules (e.g. a node pool) still apply.
        if spec.resources.affinity:
            result["affinity"] = copy.deepcopy(spec.resources.affinity)
        if spec.resources.tolerations:
            result["tolerations"] = [toleration.dump() for toleration in spec.resources.tolerations]
    return result
