"""`modeldeploy build` and `modeldeploy serve`.

Plain functions with typer options; the operator's CLI registers them. Heavy imports (torch,
transformers) happen inside the commands so that importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
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
from model_repo.model_set import SharedRuntime
from model_repo.openai_frontend.token_arrays import TokenArrays
from model_repo.openai_local import DEFAULT_LOCAL_PORT
from model_repo.options import (
    BUILD_FLAGS,
    MAX_BATCH_SIZE_LIMIT,
    BuildFlag,
    BuildOptions,
    DType,
    ModelFormat,
    Quantization,
    Task,
)
from model_repo.progress import DEFAULT_STALL_SECONDS, BuildProgress, Report
from model_repo.triton_args import DEFAULT_CPU_WAIT_POLICY, CpuWaitPolicy

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


# Per BuildOptions field, in BUILD_FLAGS (options.py) order: the CLI's type and help text. The flag and its
# place are BUILD_FLAGS', the default is BuildOptions'.
_CLI_OPTIONS: dict[str, tuple[Any, str]] = {
    "source": (
        str,
        "Checkpoint URI: hf://org/name, s3://bucket/prefix, gs://bucket/prefix, pvc://claim/path "
        "(under $MODELDEPLOY_PVC_ROOT, default /mnt/pvc) or file:///abs/path.",
    ),
    "revision": (str | None, "hf:// revision (branch, tag, commit)."),
    "task": (Task | None, "Task; default: read from the checkpoint."),
    "format": (ModelFormat, "auto: vllm for text-generation on GPUs, python otherwise."),
    "dtype": (DType, "auto: float16 on GPUs, float32 on CPUs."),
    "max_batch_size": (
        int | None,
        f"Largest batch Triton forms (1 to {MAX_BATCH_SIZE_LIMIT}; default: 32 on CPUs, 128 on GPUs).",
    ),
    "max_queue_delay_us": (
        int,
        "How long an idle instance waits for more requests to batch (µs). Busy instances batch "
        "whatever queued meanwhile regardless, so this only costs a lone request; keep it small.",
    ),
    "preferred_batch_sizes": (list[int] | None, "Preferred batch size (repeatable)."),
    "instances_per_device": (int | None, "Model instances per device (default: 1 on CPUs, 2 on GPUs)."),
    "max_sequence_length": (int | None, "Token limit; longer input is truncated."),
    "max_concurrent_sequences": (
        int | None,
        "text-generation: sequences decoded together per instance; more wait in a bounded queue. "
        "Default: from the device and the KV cache a sequence needs.",
    ),
    "max_tokens": (
        int | None,
        "text-generation: the most tokens one request may ask for (default: the context length - 1).",
    ),
    "device": (str, "cpu or gpu."),
    "response_cache": (bool, "Enable Triton's response cache."),
    "quantization": (
        Quantization,
        "int8: dynamic int8 Linear layers (CPU, encoder tasks), checked against float32 by the "
        "accuracy gate.",
    ),
    "accuracy_floor": (
        float | None,
        "Accuracy gate floor for the task's metric (default: cosine 0.99 for embeddings, "
        "agreement 0.98 otherwise).",
    ),
    "calibration_file": (Path | None, "Calibration texts, one per line (default: a built-in set)."),
    "trust_remote_code": (bool, "Allow running code shipped inside the checkpoint."),
    "allow_new_head": (
        bool,
        "Build even when the task's head is not in the checkpoint (it would be random) or the "
        "checkpoint was trained for another task. Only to fine-tune the fresh head elsewhere.",
    ),
    "model_name": (str, "Triton model name."),
}


def _option(spec: BuildFlag) -> inspect.Parameter:
    annotation, help_text = _CLI_OPTIONS[spec.field]
    default = BUILD_OPTION_DEFAULTS.get(spec.field, ...)
    declaration = spec.flag
    if spec.kind == "toggle":
        declaration += "/--no-" + spec.flag.removeprefix("--")
    return inspect.Parameter(
        spec.field,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=annotation,
        default=typer.Option(None if default == () else default, declaration, help=help_text),
    )


BUILD_OPTION_DEFAULTS = {
    field.name: field.default
    for field in dataclasses.fields(BuildOptions)
    if field.default is not dataclasses.MISSING
}
# The options `build` and `serve` share, defined once: BuildOptions' fields, by BUILD_FLAGS.
BUILD_PARAMETERS: tuple[inspect.Parameter, ...] = tuple(_option(spec) for spec in BUILD_FLAGS)


def _build_options(values: dict[str, Any]) -> BuildOptions:
    """BuildOptions from the values of BUILD_PARAMETERS (a list where it keeps a tuple, a Path where it
    keeps the absolute path's text)."""
    calibration_file: Path | None = values.pop("calibration_file")
    return BuildOptions(
        preferred_batch_sizes=tuple(values.pop("preferred_batch_sizes") or ()),
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


# Options `serve` takes once per model it packs into one server.
PER_MODEL = {
    "source": " Repeat --source (with one --model-name each) to pack several models into one server.",
    "model_name": " One per --source when several are given.",
}


def with_build_options_per_source(command: Callable[..., None]) -> Callable[..., None]:
    """Like `with_build_options`, but --source and --model-name repeat: `command` receives one
    BuildOptions per source (the other build options shared by all)."""
    signature = inspect.signature(command, eval_str=True)
    own = [parameter for name, parameter in signature.parameters.items() if name != "per_source"]
    names = [parameter.name for parameter in BUILD_PARAMETERS]

    def repeated(parameter: inspect.Parameter) -> inspect.Parameter:
        info = parameter.default
        default = ... if parameter.name == "source" else None
        annotation = list[str] if parameter.name == "source" else list[str] | None
        return parameter.replace(
            annotation=annotation,
            default=typer.Option(
                default, *info.param_decls, help=(info.help or "") + PER_MODEL[parameter.name]
            ),
        )

    @functools.wraps(command)
    def run(**values: Any) -> None:
        shared = {name: values.pop(name) for name in names}
        sources: list[str] = shared.pop("source")
        model_names: list[str] = shared.pop("model_name") or []
        if len(sources) > 1 and len(model_names) != len(sources):
            raise typer.BadParameter(
                f"{len(sources)} --source options need as many --model-name options (one per model, in the "
                f"same order), got {len(model_names)}",
                param_hint="--model-name",
            )
        model_names = model_names or ["model"]
        if len(set(model_names)) != len(model_names):
            raise typer.BadParameter("each --model-name must be different", param_hint="--model-name")
        per_source = [
            _build_options({**shared, "source": source, "model_name": name})
            for source, name in zip(sources, model_names, strict=True)
        ]
        command(per_source, **values)

    parameters = [repeated(p) if p.name in PER_MODEL else p for p in BUILD_PARAMETERS]
    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*parameters, *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own)]
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


def _print_report(report: Report) -> None:
    """A progress report as one log line the operator parses (stdout: not a terminal, so a log)."""
    print(report.to_line(), flush=True)


def _abort_stalled(message: str) -> None:
    """End the build of a stalled download: the download blocks in a library, so only leaving the
    process stops it. Its error is the termination message, as for any failed build."""
    typer.echo(f"modeldeploy build: error: {message}", err=True)
    _termination_message(message)
    sys.stderr.flush()
    os._exit(2)


def _build(
    options: BuildOptions,
    out: Path,
    force: bool = False,
    stall_seconds: float = DEFAULT_STALL_SECONDS,
    reports: bool = False,
) -> BuildResult:
    """Build, with progress as sentences on stderr, or (`reports`) as report lines on stdout."""
    from model_repo.build import build_repository

    progress = BuildProgress(
        _progress,
        report=_print_report if reports else None,
        stall_seconds=stall_seconds,
        on_stall=_abort_stalled,
    )
    try:
        return build_repository(options, out, progress=progress, force=force)
    except BuildError as exc:
        typer.echo(f"modeldeploy build: error: {exc}", err=True)
        _termination_message(str(exc))
        raise typer.Exit(code=2) from exc


@with_build_options
def build(
    options: BuildOptions,
    out: Annotated[Path, typer.Option("--out", help="Repository directory (written atomically).")],
    force: ForceOption = False,
    stall_timeout: Annotated[
        int,
        typer.Option(
            "--stall-timeout",
            help="Fail a download that receives no bytes for this many seconds (0: never).",
            min=0,
        ),
    ] = DEFAULT_STALL_SECONDS,
) -> None:
    """Build a Triton model repository from a Transformers checkpoint."""
    from model_repo.output_dir import read_record

    # In a terminal progress is sentences; in a pod's log (no terminal) reports the operator reads.
    result = _build(options, out, force, stall_timeout, reports=not sys.stdout.isatty())
    state = "cache hit" if result.cache_hit else "built"
    typer.echo(
        f"{state}: {result.path} (format={result.format.value} task={result.task.value} "
        f"model={result.model_name} digest={result.digest})"
    )
    record = read_record(result.path) or {}
    accuracy = record.get("accuracy")
    # What the operator reads from the build pod: a shared server places the model by its memory.
    message: dict[str, Any] = {"memoryBytes": (record.get("memory") or {}).get("total_bytes")}
    if accuracy:
        gate = accuracy["gate"]
        typer.echo(
            f"accuracy vs float32: {json.dumps(accuracy['metrics'])} "
            f"(gate: {gate['metric']} {gate['value']} >= {gate['floor']})"
        )
        message["accuracy"] = accuracy_status(accuracy)
    _termination_message(json.dumps(message))


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
    from model_repo.output_dir import read_record

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


def default_serve_workdir(per_source: list[BuildOptions]) -> Path:
    """`serve`'s work directory without --workdir: one per set of build options (its flags' hash), so a
    serve of another model never builds over a repository that a running serve is serving."""
    flags = "\0\0".join("\0".join(options.to_args()) for options in per_source)
    key = hashlib.sha256(flags.encode()).hexdigest()[:12]
    name = "+".join(options.model_name for options in per_source)
    return Path(tempfile.gettempdir()) / "modeldeploy-serve" / f"{name}-{key}"


def _load_all(served: Path, results: list[BuildResult], http_url: str, shared: SharedRuntime | None) -> None:
    """Load every built repository into the explicit-mode server at `http_url` (Triton's error if not)."""
    from model_repo.model_set import TritonRepositoryClient, reconcile
    from model_repo.triton import TritonError

    desired = {result.model_name: result.path for result in results}
    report = reconcile(served, desired, TritonRepositoryClient(http_url), shared_runtime=shared)
    if report.failed:
        raise TritonError(
            "; ".join(f"model {name} failed to load: {error}" for name, error in report.failed.items())
        )


@with_build_options_per_source
def serve(
    per_source: list[BuildOptions],
    force: ForceOption = False,
    http_port: Annotated[
        int | None, typer.Option("--http-port", help="Default: 8000, or a free port if 8000 is taken.")
    ] = None,
    grpc_port: Annotated[
        int | None, typer.Option("--grpc-port", help="Default: 8001, or a free port if 8001 is taken.")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Default: 8002, or a free port if 8002 is taken.")
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            help="Where the repository is built (a cache: reused when unchanged). Default: one directory "
            "per set of build options under the system's temporary directory, so serves of different "
            "models, one after the other or at the same time, never share one.",
        ),
    ] = None,
    openai: Annotated[
        bool,
        typer.Option(
            "--openai",
            help="Also serve the sidecar's APIs (OpenAI-compatible embeddings, completions, chat; rerank, "
            "score, classify; TEI's routes) on --openai-port.",
        ),
    ] = False,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key",
            envvar="MODELDEPLOY_API_KEY",
            help=(
                "With --openai: require this key ('Authorization: Bearer <key>') on the API; repeat for "
                "several. Prefer the environment variable: a command line is visible to every local user."
            ),
        ),
    ] = None,
    openai_port: Annotated[
        int,
        typer.Option(
            "--openai-port", min=1, max=65535, help="Port of the --openai API (two local servers need two)."
        ),
    ] = DEFAULT_LOCAL_PORT,
    token_arrays: Annotated[
        TokenArrays,
        typer.Option(
            "--token-arrays",
            help="With --openai: whose ids the token arrays of /v1/embeddings hold (spec.api.openai."
            "tokenArrays): model (the model's tokenizer) or cl100k_base (tiktoken's, what LangChain's "
            "OpenAIEmbeddings sends by default; decoded to text, then embedded).",
        ),
    ] = TokenArrays.MODEL,
    separate_stubs: Annotated[
        bool,
        typer.Option(
            "--separate-stubs",
            help="With several --source: give every encoder its own Python stub (each imports torch) "
            "instead of running them all in one shared host model (less memory; docs/packing.md).",
        ),
    ] = False,
    cpu_wait_policy: Annotated[
        CpuWaitPolicy,
        typer.Option(
            "--cpu-wait-policy",
            help="spec.triton.cpuWaitPolicy: spin (OpenMP threads spin for tens of microseconds before "
            "they sleep; the default) or passive (they sleep at once: the least CPU time beside other "
            "work).",
        ),
    ] = DEFAULT_CPU_WAIT_POLICY,
) -> None:
    """Build the repository and serve it with a local tritonserver until Ctrl-C (several --source: each
    model built into its own repository, all loaded into one server in explicit model-control mode)."""
    from model_repo.openai_local import FrontendError, openai_frontend_for
    from model_repo.triton import TritonError, TritonServer, port_or_free
    from model_repo.triton_args import cpu_wait_environment, loopback_server_args, triton_server_args

    for given, option in (
        (bool(api_key), "--api-key"),
        (token_arrays is not TokenArrays.MODEL, "--token-arrays"),
    ):
        if given and not openai:
            typer.echo(
                f"modeldeploy serve: error: {option} applies to the OpenAI API; add --openai", err=True
            )
            raise typer.Exit(code=2)
    base = workdir or default_serve_workdir(per_source)
    packed = len(per_source) > 1
    if packed and openai:
        raise typer.BadParameter("--openai serves one model; give one --source", param_hint="--openai")
    if packed:
        results = [_build(o, base / "repositories" / o.model_name, force) for o in per_source]
    else:
        results = [_build(per_source[0], base / "repository", force)]
    extra = triton_server_args(response_cache=any(o.response_cache for o in per_source))
    if api_key:
        # The keys guard the OpenAI API only: Triton's own ports must not be a way around them.
        extra += loopback_server_args()
    # Several models: one server over a directory of links to their repositories, each model loaded
    # through Triton's repository API (as a shared server's agent does in the cluster).
    served = base / "served"
    shared = None
    if packed:
        served.mkdir(parents=True, exist_ok=True)
        if not separate_stubs:
            from model_repo.python_backend import instance_kind

            kind = instance_kind("gpu" if any(o.device == "gpu" for o in per_source) else "cpu")
            shared = SharedRuntime(base / "served.shared", kind)
        extra += ["--model-control-mode=explicit", f"--model-repository={served}"]

    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = TritonServer(
        None if packed else results[0].path,
        http_port=http_port or port_or_free(8000),
        grpc_port=grpc_port or port_or_free(8001),
        metrics_port=metrics_port or port_or_free(8002),
        extra_args=extra,
        ready_timeout_s=600,
        log_path=base / "tritonserver.log",
        host="127.0.0.1",
        environment=cpu_wait_environment(cpu_wait_policy),
    )
    frontend = openai_frontend_for(
        results[0].path,
        server.grpc_url,
        base,
        enabled=openai,
        api_keys=api_key or [],
        port=openai_port,
        token_arrays=token_arrays,
    )
    try:
        _progress(f"starting tritonserver (log: {server.log_path})")
        server.start()
        if packed:
            _load_all(served, results, server.http_url, shared)
        frontend.start()
        for result in results:
            typer.echo(f"ready: model {result.model_name!r} ({result.task.value}, {result.format.value})")
        typer.echo(f"  HTTP    http://{server.http_url}")
        typer.echo(f"  gRPC    {server.grpc_url}")
        typer.echo(f"  metrics {server.metrics_url}")
        if frontend.enabled:
            keyed = "; API key required" if api_key else ""
            typer.echo(f"  OpenAI  {frontend.base_url}  (model {results[0].model_name!r}{keyed})")
        for result in results:
            typer.echo(
                f"example request ({result.model_name}):\n"
                + example_requests(result, server.http_url, server.grpc_url)
            )
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
