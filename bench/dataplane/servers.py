"""The served contenders, each started as its own process and torn down after its measurements.

- ours: the repository `modeldeploy build` writes (python format), served by the real tritonserver;
- ours-int8, ours-bf16: the same with `--quantization int8` or `--dtype bfloat16` (past the accuracy gate);
- baseline-a: Triton's Hugging Face tutorial model (per-request pipeline, no batching), same server;
- baseline-b: FastAPI + uvicorn calling a pipeline per request;
- ours-gpu (opt-in): ours built with candidate GPU settings (see GPU_CANDIDATE_BUILD).
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.baselines import TUTORIAL_MODEL_NAME, write_tutorial_repository
from bench.common.checkpoints import BenchModel
from bench.common.perf_analyzer import Target
from model_repo.options import DType, Quantization
from model_repo.triton import free_port, stop_process_group
from model_repo.triton_args import (
    DEFAULT_CPU_WAIT_POLICY,
    CpuWaitPolicy,
    cpu_wait_environment,
    repository_server_args,
)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
OURS_MODEL_NAME = "model"
# What a Kubernetes container of ours runs with (besides ports and repository).
TRITON_ARGS = (
    "--strict-readiness=true",
    "--log-verbose=0",
    *repository_server_args(),
)


# The optimised contenders' build options (besides the defaults ours uses).
OPTIMISATIONS: dict[str, dict[str, Any]] = {
    "ours-int8": {"quantization": Quantization.INT8},
    "ours-bf16": {"dtype": DType.BFLOAT16},
}


class ClosableSender(Protocol):
    async def __call__(self, text: str) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Endpoint:
    """A running contender: how to talk to it, where its Triton metrics are, and how it was set up."""

    make_sender: Callable[[], ClosableSender]
    metrics_url: str | None
    metrics_model: str | None
    config: dict[str, Any] = field(default_factory=dict)
    # A Triton model perf_analyzer can drive; None where only the Python generator can (FastAPI).
    target: Target | None = None
    # Embeddings of texts (rows in order), for the run's check that contenders give the same answers;
    # None where the contender is not an embedding server.
    embed: Callable[[Sequence[str]], Any] | None = None


def openai_embeddings(url: str, model: str, texts: Sequence[str]) -> Any:
    """Embeddings from an OpenAI-style `/embeddings` route, one request for all `texts`."""
    import json

    import numpy as np

    body = json.dumps({"model": model, "input": list(texts)}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        data = sorted(json.loads(response.read())["data"], key=lambda item: item["index"])
    return np.array([item["embedding"] for item in data], dtype=np.float32)


def triton_embeddings(grpc_url: str, model: str, texts: Sequence[str]) -> Any:
    """Embeddings straight from Triton (gRPC), one text per request, as the load sends them."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        rows = []
        for text in texts:
            tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
            rows.append(client.infer(model, [tensor]).as_numpy("EMBEDDING")[0])
        return np.stack(rows)
    finally:
        client.close()


def torch_dtype(device: str) -> str:
    return "float16" if device == "cuda" else "float32"


def runtime_notes(log: str) -> list[str]:
    """What the generated runtime says about itself at load (e.g. the batch planner's calibration)."""
    return [line.split("] ", 1)[-1].strip('"') for line in log.splitlines() if "model.py:" in line]


@contextlib.contextmanager
def serve_ours(
    model: BenchModel,
    workdir: Path,
    device: str,
    build_overrides: Mapping[str, int],
    optimisation: Mapping[str, Any] | None = None,
    environment: Mapping[str, str] | None = None,
) -> Iterator[Endpoint]:
    from bench.common.loadgen import TritonGrpcSender
    from model_repo.build import build_repository
    from model_repo.options import BuildOptions
    from model_repo.output_dir import read_record
    from model_repo.triton import TritonServer

    options = BuildOptions(
        source=f"file://{model.path}",
        model_name=OURS_MODEL_NAME,
        device="gpu" if device == "cuda" else "cpu",
        **build_overrides,  # type: ignore[arg-type]
        **(optimisation or {}),
    )
    # Optimised repositories are built next to the contender's directory, where the run built them
    # before measuring the raw int8 limit (same options, same digest: a cache hit, not a second build).
    target = (
        workdir / "ours-repository" if not optimisation else workdir.parent / f"{workdir.name}-repository"
    )
    built = build_repository(options, target)
    config_text = (built.path / OURS_MODEL_NAME / "config.pbtxt").read_text()
    args = [*TRITON_ARGS, f"--model-repository={built.path}"]
    with TritonServer(
        None,
        extra_args=args,
        ready_timeout_s=600,
        log_path=workdir / "ours-triton.log",
        # As the operator serves it: spec.triton.cpuWaitPolicy unset unless a contender says otherwise.
        environment=cpu_wait_environment(DEFAULT_CPU_WAIT_POLICY) if environment is None else environment,
    ) as server:
        yield Endpoint(
            make_sender=lambda: TritonGrpcSender(server.grpc_url, OURS_MODEL_NAME, "TEXT", batched=True),
            metrics_url=server.metrics_url,
            metrics_model=OURS_MODEL_NAME,
            target=Target(server.grpc_url, OURS_MODEL_NAME, "TEXT"),
            embed=(
                functools.partial(triton_embeddings, server.grpc_url, OURS_MODEL_NAME)
                if model.task == "feature-extraction"
                else None
            ),
            config={
                "format": built.format.value,
                "build_options": {
                    "max_batch_size": options.batching().max_batch_size,
                    "max_queue_delay_us": options.max_queue_delay_us,
                    "instances_per_device": options.batching().instances_per_device,
                    "device": options.device,
                },
                "repository": str(built.path),
                "config_pbtxt": config_text,
                "accuracy": (read_record(built.path) or {}).get("accuracy"),
                "triton_args": list(TRITON_ARGS),
                "runtime_log": runtime_notes(server.log()),
            },
        )


@contextlib.contextmanager
def serve_tutorial(
    model: BenchModel, workdir: Path, device: str, build_overrides: Mapping[str, int]
) -> Iterator[Endpoint]:
    from bench.common.loadgen import TritonGrpcSender
    from model_repo.triton import TritonServer

    repository = write_tutorial_repository(
        model, workdir / "baseline-a-repository", device, torch_dtype(device)
    )
    args = [*TRITON_ARGS, f"--model-repository={repository}"]
    log = workdir / "baseline-a-triton.log"
    with TritonServer(None, extra_args=args, ready_timeout_s=600, log_path=log) as server:
        yield Endpoint(
            make_sender=lambda: TritonGrpcSender(
                server.grpc_url, TUTORIAL_MODEL_NAME, "prompt", batched=False
            ),
            metrics_url=server.metrics_url,
            metrics_model=TUTORIAL_MODEL_NAME,
            target=Target(server.grpc_url, TUTORIAL_MODEL_NAME, "prompt"),
            config={
                "config_pbtxt": (repository / TUTORIAL_MODEL_NAME / "config.pbtxt").read_text(),
                "triton_args": list(TRITON_ARGS),
            },
        )


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"uvicorn exited with {process.returncode}:\n{log.read_text(errors='replace')}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"uvicorn not ready within {timeout_s:.0f}s:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def serve_fastapi(
    model: BenchModel, workdir: Path, device: str, build_overrides: Mapping[str, int]
) -> Iterator[Endpoint]:
    from bench.common.loadgen import HttpJsonSender

    port = free_port()
    env = dict(os.environ)
    env.update(
        BASELINE_MODEL=str(model.path),
        BASELINE_TASK=model.task,
        BASELINE_DEVICE=device,
        BASELINE_DTYPE=torch_dtype(device),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
    )
    # One worker (uvicorn's default); the access log is off so that logging does not slow the baseline.
    command = [
        sys.executable, "-m", "uvicorn", "bench.baselines.fastapi_pipeline:app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    log = workdir / "baseline-b-uvicorn.log"
    with log.open("wb") as stream:
        process = subprocess.Popen(
            command, stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", process, 300, log)
        yield Endpoint(
            make_sender=lambda: HttpJsonSender(f"http://127.0.0.1:{port}/predict"),
            metrics_url=None,
            metrics_model=None,
            config={"command": " ".join(command[1:]), "endpoint": "def (thread pool)"},
        )
    finally:
        stop_process_group(process, 20)


@contextlib.contextmanager
def serve_ours_openai(
    model: BenchModel,
    workdir: Path,
    device: str,
    build_overrides: Mapping[str, int],
    calls_in_flight: int | None = None,
) -> Iterator[Endpoint]:
    """Ours as an OpenAI client reaches it: the same repository and tritonserver, behind the OpenAI
    sidecar (`python -m model_repo.openai_frontend`), `POST /v1/embeddings` one text per request;
    `calls_in_flight`: the sidecar's --calls-in-flight (None: its default)."""
    from bench.common.loadgen import OpenAIEmbeddingSender
    from model_repo.openai_local import LocalFrontend

    with serve_ours(model, workdir, device, build_overrides) as ours:
        assert ours.target is not None
        repository = Path(ours.config["repository"])
        with LocalFrontend(
            repository,
            ours.target.grpc_url,
            free_port(),
            log_path=workdir / f"ours-openai-{calls_in_flight}.log",
            calls_in_flight=calls_in_flight,
        ) as frontend:
            url = f"{frontend.base_url}/embeddings"  # base_url ends in /v1
            yield Endpoint(
                make_sender=lambda: OpenAIEmbeddingSender(url, OURS_MODEL_NAME),
                embed=functools.partial(openai_embeddings, url, OURS_MODEL_NAME),
                metrics_url=ours.metrics_url,
                metrics_model=ours.metrics_model,
                config={**ours.config, "endpoint": url},
            )


INFINITY_MODEL_NAME = "bench-model"


@contextlib.contextmanager
def serve_infinity(
    model: BenchModel, workdir: Path, device: str, build_overrides: Mapping[str, int]
) -> Iterator[Endpoint]:
    """Infinity (`infinity-emb` 0.0.78, torch engine, its default batching) in its own environment
    (bench/common/install_infinity.sh), `POST /embeddings` one text per request. Embedding models only."""
    from bench.common.loadgen import OpenAIEmbeddingSender

    if model.task != "feature-extraction":
        raise ValueError(f"infinity serves embedding models; {model.key} is {model.task}")
    executable = subprocess.run(
        ["bash", str(REPO_ROOT / "bench/common/install_infinity.sh"), sys.prefix],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    port = free_port()
    command = [
        executable, "v2", "--model-id", str(model.path), "--served-model-name", INFINITY_MODEL_NAME,
        "--engine", "torch", "--device", device, "--dtype", torch_dtype(device), "--port", str(port),
        "--host", "127.0.0.1", "--no-model-warmup",
    ]  # fmt: skip
    log = workdir / "infinity.log"
    env = {**os.environ, "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as stream:
        process = subprocess.Popen(
            command, stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", process, 300, log)
        url = f"http://127.0.0.1:{port}/embeddings"
        yield Endpoint(
            make_sender=lambda: OpenAIEmbeddingSender(url, INFINITY_MODEL_NAME),
            embed=functools.partial(openai_embeddings, url, INFINITY_MODEL_NAME),
            metrics_url=None,
            metrics_model=None,
            config={"command": " ".join(command[1:]), "endpoint": url, "version": "infinity-emb 0.0.78"},
        )
    finally:
        stop_process_group(process, 20)


CONTENDERS: dict[
    str,
    tuple[
        str, Callable[[BenchModel, Path, str, Mapping[str, int]], contextlib.AbstractContextManager[Endpoint]]
    ],
] = {
    "ours": ("ours: modeldeploy build (python format) on tritonserver", serve_ours),
    "ours-int8": (
        "ours, --quantization int8 (python format) on tritonserver",
        functools.partial(serve_ours, optimisation=OPTIMISATIONS["ours-int8"]),
    ),
    "ours-bf16": (
        "ours, --dtype bfloat16 (python format) on tritonserver",
        functools.partial(serve_ours, optimisation=OPTIMISATIONS["ours-bf16"]),
    ),
    # spec.triton.cpuWaitPolicy passive against ours (spin, the default): the same repository.
    "ours-passive": (
        "ours, cpuWaitPolicy passive (OpenMP threads sleep at once)",
        functools.partial(serve_ours, environment=cpu_wait_environment(CpuWaitPolicy.PASSIVE)),
    ),
    "baseline-a": ("baseline (a): Triton HF tutorial model.py, pipeline per request", serve_tutorial),
    "baseline-b": ("baseline (b): FastAPI + uvicorn, pipeline per request", serve_fastapi),
    "ours-openai": ("ours through the OpenAI sidecar: POST /v1/embeddings", serve_ours_openai),
    "infinity": ("Infinity 0.0.78 (torch engine): POST /embeddings", serve_infinity),
    # The sidecar as it was before requests shared Triton calls (coalescing.py), for the side-by-side.
    "ours-openai-one-call-each": (
        "ours through the OpenAI sidecar, each request its own Triton call (--calls-in-flight 0)",
        functools.partial(serve_ours_openai, calls_in_flight=0),
    ),
}


# Candidate GPU defaults (issue 18), measured side by side with ours before any default changes: a batch
# limit above the 64 clients' worth the benchmark offers, so one instance can take every queued request,
# and two instances per GPU, so one instance's host work (request decoding, tokenisation, response
# tensors, each stub's own GIL) overlaps the other's forward pass. Opt-in (`--contenders`), never a default
# contender: on a CPU, two instances only split the same cores.
GPU_CANDIDATE_BUILD = {"max_batch_size": 128, "instances_per_device": 2}


@contextlib.contextmanager
def serve_ours_gpu_candidate(
    model: BenchModel, workdir: Path, device: str, build_overrides: Mapping[str, int]
) -> Iterator[Endpoint]:
    with serve_ours(model, workdir, device, {**GPU_CANDIDATE_BUILD, **build_overrides}) as endpoint:
        yield endpoint


CONTENDERS["ours-gpu"] = (
    "ours, candidate GPU settings: max batch 128, 2 instances per device",
    serve_ours_gpu_candidate,
)
# A CPU candidate: two instances, each with half the cores, so that one instance's wait for Triton (its
# requests in and responses out through the stub's shared memory, 26-28% of a tiny model's stub time at 64
# clients) overlaps the other's work. Measured against ours (one instance, every core) before any default
# changes.
CPU_TWO_INSTANCES_BUILD = {"instances_per_device": 2}


@contextlib.contextmanager
def serve_ours_two_instances(
    model: BenchModel, workdir: Path, device: str, build_overrides: Mapping[str, int]
) -> Iterator[Endpoint]:
    with serve_ours(model, workdir, device, {**build_overrides, **CPU_TWO_INSTANCES_BUILD}) as endpoint:
        yield endpoint


CONTENDERS["ours-2-instances"] = ("ours, 2 instances per device", serve_ours_two_instances)
# Asked for by name: the optimised ones build and gate their own repositories (minutes for MiniLM); the GPU
# candidate is for the GPU measurement.
OPT_IN_CONTENDERS = frozenset(
    {
        "ours-int8",
        "ours-bf16",
        "ours-gpu",
        "ours-openai",
        "ours-openai-one-call-each",
        "infinity",
        "ours-passive",
        "ours-2-instances",
    }
)


def onnx_unavailable_reason() -> str | None:
    """Why the onnx format cannot be served by the local tritonserver, or None if it could be."""
    from model_repo.triton import find_tritonserver

    installation = find_tritonserver()
    # None: the server's compiled-in default directory.
    backends = installation.backend_directory or Path("/opt/tritonserver/backends")
    if backends.is_dir() and not (backends / "onnxruntime").exists():
        names = sorted(path.name for path in backends.iterdir() if path.is_dir())
        return (
            f"the local tritonserver ({installation.binary}) bundles only the {', '.join(names)} backend(s), "
            "no onnxruntime backend, so an onnx-format repository cannot be served here"
        )
    return None
