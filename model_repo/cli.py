"""`modeldeploy build` and `modeldeploy serve`.

Plain functions with typer options; the operator's CLI registers them. Heavy imports (torch,
transformers) happen inside the commands so that importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from model_repo.errors import BuildError
from model_repo.openai_local import DEFAULT_LOCAL_PORT
from model_repo.options import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    MAX_BATCH_SIZE_LIMIT,
    BuildOptions,
    DType,
    ModelFormat,
    Quantization,
    Task,
)

if TYPE_CHECKING:
    from model_repo.build import BuildResult

# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4000

ForceOption = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Replace the repository directory even when it is not one this builder wrote, or holds files "
        "it did not write (they are deleted).",
    ),
]


def _option(name: str, annotation: Any, default: Any, flag: str, help_text: str) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=annotation,
        default=typer.Option(default, flag, help=help_text),
    )


# The options `build` and `serve` share, defined once, in the order --help lists them: BuildOptions'
# fields, by the CLI's parameter names (see `_build_options`).
BUILD_PARAMETERS: tuple[inspect.Parameter, ...] = (
    _option(
        "source",
        str,
        ...,
        "--source",
        "Checkpoint URI: hf://org/name, s3://bucket/prefix, gs://bucket/prefix, pvc://claim/path "
        "(under $MODELDEPLOY_PVC_ROOT, default /mnt/pvc) or file:///abs/path.",
    ),
    _option("revision", str | None, None, "--revision", "hf:// revision (branch, tag, commit)."),
    _option("task", Task | None, None, "--task", "Task; default: read from the checkpoint."),
    _option(
        "model_format",
        ModelFormat,
        ModelFormat.AUTO,
        "--format",
        "auto: vllm for text-generation on GPUs, python otherwise.",
    ),
    _option("dtype", DType, DType.AUTO, "--dtype", "auto: float16 on GPUs, float32 on CPUs."),
    _option(
        "max_batch_size",
        int,
        DEFAULT_MAX_BATCH_SIZE,
        "--max-batch-size",
        f"Largest batch Triton forms (1 to {MAX_BATCH_SIZE_LIMIT}).",
    ),
    _option(
        "max_queue_delay_us",
        int,
        DEFAULT_MAX_QUEUE_DELAY_US,
        "--max-queue-delay-us",
        "How long an idle instance waits for more requests to batch (µs). Busy instances batch "
        "whatever queued meanwhile regardless, so this only costs a lone request; keep it small.",
    ),
    _option(
        "preferred_batch_size",
        list[int] | None,
        None,
        "--preferred-batch-size",
        "Preferred batch size (repeatable).",
    ),
    _option("instances_per_device", int, 1, "--instances-per-device", "Model instances per device."),
    _option(
        "max_sequence_length",
        int | None,
        None,
        "--max-sequence-length",
        "Token limit; longer input is truncated.",
    ),
    _option("device", str, "cpu", "--device", "cpu or gpu."),
    _option(
        "response_cache",
        bool,
        False,
        "--response-cache/--no-response-cache",
        "Enable Triton's response cache.",
    ),
    _option(
        "trust_remote_code",
        bool,
        False,
        "--trust-remote-code",
        "Allow running code shipped inside the checkpoint.",
    ),
    _option("model_name", str, "model", "--model-name", "Triton model name."),
    _option(
        "allow_new_head",
        bool,
        False,
        "--allow-new-head",
        "Build even when the task's head is not in the checkpoint (it would be random) or the "
        "checkpoint was trained for another task. Only to fine-tune the fresh head elsewhere.",
    ),
    _option(
        "quantization",
        Quantization,
        Quantization.NONE,
        "--quantization",
        "int8: dynamic int8 Linear layers (CPU, encoder tasks), checked against float32 by the "
        "accuracy gate.",
    ),
    _option(
        "accuracy_floor",
        float | None,
        None,
        "--accuracy-floor",
        "Accuracy gate floor for the task's metric (default: cosine 0.99 for embeddings, "
        "agreement 0.98 otherwise).",
    ),
    _option(
        "calibration_file",
        Path | None,
        None,
        "--calibration-file",
        "Calibration texts, one per line (default: a built-in set).",
    ),
    _option(
        "max_concurrent_sequences",
        int | None,
        None,
        "--max-concurrent-sequences",
        "text-generation: sequences decoded together per instance; more wait in a bounded queue. "
        "Default: from the device and the KV cache a sequence needs.",
    ),
    _option(
        "max_tokens",
        int | None,
        None,
        "--max-tokens",
        "text-generation: the most tokens one request may ask for (default: the context length - 1).",
    ),
)


def _build_options(values: dict[str, Any]) -> BuildOptions:
    """BuildOptions from the values of BUILD_PARAMETERS; the CLI names two of them differently."""
    calibration_file: Path | None = values.pop("calibration_file")
    return BuildOptions(
        format=values.pop("model_format"),
        preferred_batch_sizes=tuple(values.pop("preferred_batch_size") or ()),
        calibration_file=str(calibration_file.absolute()) if calibration_file else None,
        **values,
    )


def with_build_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command`, whose first parameter is `options: BuildOptions`, the shared build options
    (BUILD_PARAMETERS) as its leading CLI options; it receives them as one BuildOptions."""
    signature = inspect.signature(command, eval_str=True)
    own = [parameter for name, parameter in signature.parameters.items() if name != "options"]
    names = [parameter.name for parameter in BUILD_PARAMETERS]

    @functools.wraps(command)
    def run(**values: Any) -> None:
        shared = {name: values.pop(name) for name in names}
        command(_build_options(shared), **values)

    # Typer reads the options from the signature: the shared ones first, then the command's own.
    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*BUILD_PARAMETERS, *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own)]
    )
    return run


def _progress(message: str) -> None:
    typer.echo(f"modeldeploy: {message}", err=True)


def _termination_message(text: str) -> None:
    """Leave `text` where Kubernetes reads a container's termination message (the operator shows it in
    the status), when the builder runs in a pod that says where (MODELDEPLOY_TERMINATION_MESSAGE)."""
    path = os.environ.get("MODELDEPLOY_TERMINATION_MESSAGE")
    if not path:
        return
    with contextlib.suppress(OSError):  # a message is a courtesy; the build's outcome stands without it
        Path(path).write_text(text[-TERMINATION_MESSAGE_LIMIT:])


def _build(options: BuildOptions, out: Path, force: bool = False) -> BuildResult:
    from model_repo.build import build_repository

    try:
        return build_repository(options, out, progress=_progress, force=force)
    except BuildError as exc:
        typer.echo(f"modeldeploy build: error: {exc}", err=True)
        _termination_message(str(exc))
        raise typer.Exit(code=2) from exc


@with_build_options
def build(
    options: BuildOptions,
    out: Annotated[Path, typer.Option("--out", help="Repository directory (written atomically).")],
    force: ForceOption = False,
) -> None:
    """Build a Triton model repository from a Transformers checkpoint."""
    from model_repo.build import read_record

    result = _build(options, out, force)
    state = "cache hit" if result.cache_hit else "built"
    typer.echo(
        f"{state}: {result.path} (format={result.format.value} task={result.task.value} "
        f"model={result.model_name} digest={result.digest})"
    )
    accuracy = (read_record(result.path) or {}).get("accuracy")
    if accuracy:
        gate = accuracy["gate"]
        typer.echo(
            f"accuracy vs float32: {json.dumps(accuracy['metrics'])} "
            f"(gate: {gate['metric']} {gate['value']} >= {gate['floor']})"
        )
        _termination_message(json.dumps({"accuracy": accuracy_status(accuracy)}))


def accuracy_status(accuracy: dict[str, Any]) -> dict[str, Any]:
    """The accuracy record in the shape of the ModelDeployment's status.modelRepository.accuracy."""
    from model_repo.accuracy import describe

    optimisation = accuracy.get("optimisation") or {}
    text = describe(optimisation)
    if optimisation.get("layers_float32"):
        total = optimisation["layers_int8"] + len(optimisation["layers_float32"])
        text += f", {optimisation['layers_int8']} of {total} linear layers int8"
    gate = accuracy["gate"]
    return {
        "optimisation": text,
        "metric": gate["metric"],
        "value": gate["value"],
        "floor": gate["floor"],
        "metrics": accuracy.get("metrics") or {},
        "texts": accuracy.get("texts") or 0,
    }


def example_requests(result: BuildResult, http_url: str, grpc_url: str) -> str:
    """A curl and a tritonclient example for the served model."""
    from model_repo.build import read_record

    record = read_record(result.path) or {}
    name = result.model_name
    if result.task is Task.TEXT_GENERATION:  # one contract for the python and vllm formats
        return (
            f"curl -s -X POST http://{http_url}/v2/models/{name}/generate_stream "
            '-d \'{"text_input": "Hello, my name is", "max_tokens": 32, "stream": true}\'\n\n'
            "python - <<'EOF'\n"
            "import numpy as np, queue, tritonclient.grpc as g\n"
            f'c = g.InferenceServerClient("{grpc_url}"); q = queue.Queue()\n'
            "c.start_stream(callback=lambda result, error: q.put(error or result))\n"
            't = g.InferInput("text_input", [1], "BYTES")\n'
            't.set_data_from_numpy(np.array([b"Hello, my name is"], dtype=object))\n'
            's = g.InferInput("stream", [1], "BOOL"); s.set_data_from_numpy(np.array([True]))\n'
            f'c.async_stream_infer("{name}", [t, s], enable_empty_final_response=True)\n'
            "while True:\n"
            "    r = q.get(); assert not isinstance(r, Exception), r\n"
            '    if r.as_numpy("text_output") is not None:\n'
            '        print(r.as_numpy("text_output")[0].decode(), end="", flush=True)\n'
            '    if r.get_response().parameters["triton_final_response"].bool_param: break\n'
            "c.stop_stream()\n"
            "EOF"
        )
    sample = "Triton serves this model."
    query = ""
    if result.task is Task.TEXT_RANKING:
        # A cross-encoder scores a (QUERY, TEXT) pair per batch item.
        query = (
            '{"name": "QUERY", "shape": [1, 1], "datatype": "BYTES", "data": ["what does Triton serve?"]}, '
        )
    if result.task is Task.FILL_MASK:
        sample = f"Paris is the {record.get('mask_token') or '[MASK]'} of France."
    return (
        f"curl -s -X POST http://{http_url}/v2/models/{name}/infer -H 'Content-Type: application/json' "
        f'-d \'{{"inputs": [{query}{{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", '
        f'"data": ["{sample}"]}}]}}\'\n\n'
        "python - <<'EOF'\n"
        "import numpy as np, tritonclient.http as h\n"
        f'c = h.InferenceServerClient("{http_url}")\n'
        't = h.InferInput("TEXT", [1, 1], "BYTES")\n'
        f't.set_data_from_numpy(np.array([[b"{sample}"]], dtype=object))\n'
        + (
            'q = h.InferInput("QUERY", [1, 1], "BYTES")\n'
            'q.set_data_from_numpy(np.array([[b"what does Triton serve?"]], dtype=object))\n'
            f'r = c.infer("{name}", [q, t])\n'
            if query
            else f'r = c.infer("{name}", [t])\n'
        )
        + 'print({o["name"]: r.as_numpy(o["name"]).tolist() for o in r.get_response()["outputs"]})\n'
        "EOF"
    )


@with_build_options
def serve(
    options: BuildOptions,
    force: ForceOption = False,
    http_port: Annotated[int, typer.Option("--http-port")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port")] = 8001,
    metrics_port: Annotated[int, typer.Option("--metrics-port")] = 8002,
    workdir: Annotated[
        Path | None,
        typer.Option("--workdir", help="Where the repository is built (a cache: reused when unchanged)."),
    ] = None,
    openai: Annotated[
        bool,
        typer.Option(
            "--openai",
            help="Also serve the sidecar's APIs (OpenAI-compatible embeddings, completions, chat; rerank, "
            "score, classify; TEI's routes) on --openai-port.",
        ),
    ] = False,
    openai_port: Annotated[
        int,
        typer.Option(
            "--openai-port", min=1, max=65535, help="Port of the --openai API (two local servers need two)."
        ),
    ] = DEFAULT_LOCAL_PORT,
) -> None:
    """Build the repository and serve it with a local tritonserver until Ctrl-C."""
    from model_repo.openai_local import FrontendError, openai_frontend_for
    from model_repo.triton import TritonError, TritonServer, triton_server_args

    base = workdir or Path(tempfile.gettempdir()) / "modeldeploy-serve"
    result = _build(options, base / "repository", force)
    extra = triton_server_args(response_cache=options.response_cache)

    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = TritonServer(
        result.path,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        extra_args=extra,
        ready_timeout_s=600,
        log_path=base / "tritonserver.log",
        host="127.0.0.1",
    )
    frontend = openai_frontend_for(result.path, server.grpc_url, base, enabled=openai, port=openai_port)
    try:
        _progress(f"starting tritonserver (log: {server.log_path})")
        server.start()
        frontend.start()
        typer.echo(f"ready: model {result.model_name!r} ({result.task.value}, {result.format.value})")
        typer.echo(f"  HTTP    http://{server.http_url}")
        typer.echo(f"  gRPC    {server.grpc_url}")
        typer.echo(f"  metrics {server.metrics_url}")
        if frontend.enabled:
            typer.echo(f"  OpenAI  {frontend.base_url}  (model {result.model_name!r})")
        typer.echo("example request:\n" + example_requests(result, server.http_url, server.grpc_url))
        typer.echo("Ctrl-C to stop.")
        while not stop.wait(1.0):
            if server.process is None or server.process.poll() is not None:
                typer.echo(f"tritonserver exited unexpectedly; log:\n{server.log()[-4000:]}", err=True)
                raise typer.Exit(code=1)
    except (TritonError, FrontendError) as exc:
        typer.echo(f"modeldeploy serve: error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    finally:
        frontend.stop()
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _progress("tritonserver stopped")
    sys.stdout.flush()
