"""The builder without a server: bad inputs, remote-code refusal, digest cache, atomic output, CLI."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from conftest import serving, write_json
from typer.testing import CliRunner

from model_repo import cli
from model_repo.build import build_repository
from model_repo.configs import validate_config
from model_repo.errors import BuildError
from model_repo.fetch import select_files
from model_repo.options import BuildOptions, DType, ModelFormat, Task
from model_repo.output_dir import RECORD_FILE, read_record


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []


def _assert_refused(options: BuildOptions, out: Path, match: str) -> None:
    before = _siblings(out)
    with pytest.raises(BuildError, match=match):
        build_repository(options, out)
    assert not out.exists(), "a failed build left output behind"
    assert _siblings(out) == before, "a failed build left temporary files behind"


def test_build_writes_record_and_hits_cache(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "repo"
    options = BuildOptions(source=f"file://{checkpoints['text-classification']}")
    first = build_repository(options, out)
    assert (
        not first.cache_hit and first.format is ModelFormat.PYTHON and first.task is Task.TEXT_CLASSIFICATION
    )
    record = read_record(out)
    assert (
        record is not None
        and record["digest"] == first.digest
        and record["labels"]
        == [
            "negative",
            "neutral",
            "positive",
        ]
    )
    model_dir = out / "model"
    assert (model_dir / "1" / "model.py").read_text() == (
        Path(cli.__file__).parent / "runtime" / "model.py"
    ).read_text()
    assert (model_dir / "1" / "checkpoint" / "model.safetensors").exists()
    config_mtime = (model_dir / "config.pbtxt").stat().st_mtime_ns

    second = build_repository(options, out)
    assert second.cache_hit and second.digest == first.digest
    assert (model_dir / "config.pbtxt").stat().st_mtime_ns == config_mtime

    third = build_repository(BuildOptions(source=options.source, max_batch_size=4), out)
    assert not third.cache_hit and third.digest != first.digest
    assert "max_batch_size: 4" in (model_dir / "config.pbtxt").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]


@pytest.mark.parametrize("task", ["fill-mask", "text-generation", "text-classification"])
def test_repository_is_self_contained(checkpoints: dict[str, Path], tmp_path: Path, task: str) -> None:
    """The runtime files copied into a repository import only the standard library and what a stock
    Triton image with torch and transformers has."""
    import sys

    out = tmp_path / "repo"
    build_repository(BuildOptions(source=f"file://{checkpoints[task]}"), out)
    runtime_files = sorted((out / "model" / "1").glob("*.py"))
    expected = {
        "text-generation": [
            "answer_text.py",
            "decode_step.py",
            "decoding.py",
            "generation.py",
            "generation_metrics.py",
            "generator_front.py",
            "helpers.py",
            "hf_adapter.py",
            "model.py",
            "request_parsing.py",
            "serving.py",
        ],
        # Every encoder also carries its unpadded forward and the shared runtime's two roles
        # (forwarder.py, host.py).
        "text-classification": [
            "encoder.py",
            "forwarder.py",
            "helpers.py",
            "host.py",
            "model.py",
            "ranking.py",
            "serving.py",
            "unpadded.py",
        ],
    }
    assert [path.name for path in runtime_files] == expected.get(
        task, ["encoder.py", "forwarder.py", "helpers.py", "host.py", "model.py", "serving.py", "unpadded.py"]
    )
    for path in runtime_files:
        imports = {
            line.split()[1].split(".")[0]
            for line in path.read_text().splitlines()
            # `from . import x` names a sibling copied beside it (loaded by path inside Triton)
            if line.strip().startswith(("import ", "from ")) and not line.split()[1].startswith(".")
        }
        third_party = {name for name in imports if name not in sys.stdlib_module_names}
        assert third_party <= {"numpy", "torch", "transformers", "triton_python_backend_utils"}, path


def test_failed_rebuild_keeps_the_previous_repository(
    checkpoints: dict[str, Path], copy_checkpoint: Callable[[Path], Path], tmp_path: Path
) -> None:
    source = copy_checkpoint(checkpoints["text-classification"])
    out = tmp_path / "out" / "repo"
    good = build_repository(BuildOptions(source=f"file://{source}"), out)
    (source / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(BuildError, match="corrupt weights"):
        build_repository(BuildOptions(source=f"file://{source}"), out)
    assert read_record(out) == read_record(good.path) and sorted(os.listdir(out.parent)) == ["repo"]


def test_pickle_weights_are_loaded_safely_and_resaved_as_safetensors(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    source = tmp_path / "pickled"
    shutil.copytree(checkpoints["text-classification"], source)
    model = AutoModelForSequenceClassification.from_pretrained(str(source))
    (source / "model.safetensors").unlink()
    torch.save(model.state_dict(), source / "pytorch_model.bin")
    out = tmp_path / "repo"
    build_repository(BuildOptions(source=f"file://{source}"), out)
    files = sorted(p.name for p in (out / "model" / "1" / "checkpoint").iterdir())
    assert "model.safetensors" in files and not any(name.endswith(".bin") for name in files)


BAD_BUILDS: list[tuple[str, str]] = [
    ("unsupported-scheme", "scheme must be one of"),
    ("path-traversal", "'..' path segments are not allowed"),
    ("missing-directory", "does not exist"),
    ("no-config", "no config.json"),
    ("invalid-config-json", "config.json is not valid JSON"),
    ("no-tokenizer", "no tokenizer in the checkpoint"),
    ("no-weights", "no weights in the checkpoint"),
    ("corrupt-weights", "corrupt weights file model.safetensors"),
    ("task-without-head", "has no fill-mask head"),
    ("no-architecture", "cannot tell the task"),
    ("symlink-escape", "symlink to .* outside the source directory"),
    ("unsupported-st-module", "sentence-transformers module .*Dense.* not supported"),
    ("sequence-too-long", "exceeds the checkpoint's limit of 64"),
    ("vllm-on-cpu", "vllm needs --device gpu"),
    ("vllm-for-encoder", "vllm serves text-generation only"),
    ("fp16-on-cpu", "float16 is not supported on CPU"),
    ("cache-with-streaming", "response-cache cannot be used with text-generation"),
    ("preferred-over-max", "preferred-batch-size 64 must be between 1 and --max-batch-size 32"),
    ("bad-model-name", "--model-name"),
    ("revision-for-local", "--revision applies to hf:// sources only"),
]


def _remove_tokenizer(source: Path, _tmp: Path) -> None:
    for name in ("vocab.txt", "tokenizer.json"):
        (source / name).unlink(missing_ok=True)


def _remove_architectures(source: Path, _tmp: Path) -> None:
    config = json.loads((source / "config.json").read_text())
    config.pop("architectures")
    write_json(source / "config.json", config)


def _link_outside(source: Path, tmp: Path) -> None:
    secret = tmp / "secret.txt"
    secret.write_text("not part of the model")
    (source / "notes.txt").symlink_to(secret)


def _add_dense_module(source: Path, _tmp: Path) -> None:
    write_json(
        source / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "sentence_transformers.models.Dense"},
        ],
    )


# Bad inputs made by damaging a copy of a good checkpoint: kind -> (the checkpoint's task, the damage).
DAMAGED_COPIES: dict[str, tuple[str, Callable[[Path, Path], object]]] = {
    "no-config": ("text-classification", lambda source, _tmp: (source / "config.json").unlink()),
    "invalid-config-json": (
        "text-classification",
        lambda source, _tmp: (source / "config.json").write_text("{not json"),
    ),
    "no-tokenizer": ("text-classification", _remove_tokenizer),
    "no-weights": ("text-classification", lambda source, _tmp: (source / "model.safetensors").unlink()),
    "corrupt-weights": (
        "text-classification",
        lambda source, _tmp: (source / "model.safetensors").write_bytes(b"this is not a safetensors file"),
    ),
    "no-architecture": ("text-classification", _remove_architectures),
    "symlink-escape": ("text-classification", _link_outside),
    "unsupported-st-module": ("feature-extraction", _add_dense_module),
}


@pytest.mark.parametrize(("kind", "message"), BAD_BUILDS, ids=[kind for kind, _ in BAD_BUILDS])
def test_bad_builder_input_is_refused_cleanly(
    kind: str,
    message: str,
    checkpoints: dict[str, Path],
    copy_checkpoint: Callable[[Path], Path],
    tmp_path: Path,
) -> None:
    bert = checkpoints["text-classification"]
    options = BuildOptions(source=f"file://{bert}")
    damaged = DAMAGED_COPIES.get(kind)
    if damaged is not None:
        task, damage = damaged
        source = copy_checkpoint(checkpoints[task])
        damage(source, tmp_path)
        options = BuildOptions(source=f"file://{source}")
    elif kind == "unsupported-scheme":
        options = BuildOptions(source="ftp://example/model")
    elif kind == "path-traversal":
        options = BuildOptions(source=f"file://{bert}/../../etc")
    elif kind == "missing-directory":
        options = BuildOptions(source=f"file://{tmp_path}/nothing-here")
    elif kind == "task-without-head":
        options = BuildOptions(source=f"file://{checkpoints['text-generation']}", task=Task.FILL_MASK)
    elif kind == "sequence-too-long":
        options = BuildOptions(source=f"file://{bert}", max_sequence_length=4096)
    elif kind == "vllm-on-cpu":
        options = BuildOptions(source=f"file://{checkpoints['text-generation']}", format=ModelFormat.VLLM)
    elif kind == "vllm-for-encoder":
        options = BuildOptions(source=f"file://{bert}", format=ModelFormat.VLLM, device="gpu")
    elif kind == "fp16-on-cpu":
        options = BuildOptions(source=f"file://{bert}", dtype=DType.FLOAT16)
    elif kind == "cache-with-streaming":
        options = BuildOptions(source=f"file://{checkpoints['text-generation']}", response_cache=True)
    elif kind == "preferred-over-max":
        options = BuildOptions(source=f"file://{bert}", preferred_batch_sizes=(8, 64))
    elif kind == "bad-model-name":
        options = BuildOptions(source=f"file://{bert}", model_name="../escape")
    elif kind == "revision-for-local":
        options = BuildOptions(source=f"file://{bert}", revision="main")
    _assert_refused(options, tmp_path / "out" / "repo", message)


def test_remote_code_is_refused_and_never_imported(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    source = tmp_path / "remote-code"
    shutil.copytree(checkpoints["feature-extraction"], source)
    marker = tmp_path / "MARKER"
    (source / "modeling_marker.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('remote code ran')\n"
    )
    (source / "configuration_marker.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('remote code ran')\n"
    )
    config = json.loads((source / "config.json").read_text())
    config.update(
        model_type="marker-model",
        architectures=["MarkerModel"],
        auto_map={
            "AutoConfig": "configuration_marker.MarkerConfig",
            "AutoModel": "modeling_marker.MarkerModel",
        },
    )
    write_json(source / "config.json", config)
    out = tmp_path / "out" / "repo"
    _assert_refused(
        BuildOptions(source=f"file://{source}"), out, "trustRemoteCode: true.*--trust-remote-code"
    )
    result = CliRunner().invoke(_app(), ["build", "--source", f"file://{source}", "--out", str(out)])
    assert result.exit_code != 0 and "trust-remote-code" in result.output
    assert not marker.exists(), "code from the checkpoint was executed"
    assert not out.exists()


def test_remote_code_files_are_fetched_only_when_trusted() -> None:
    names = ["config.json", "modeling_x.py", "model.safetensors", "pytorch_model.bin", "README.md"]
    assert select_files(names, trust_remote_code=False) == ["config.json", "model.safetensors"]
    assert select_files(names, trust_remote_code=True) == [
        "config.json",
        "model.safetensors",
        "modeling_x.py",
    ]


def test_pvc_source_resolves_under_the_mount_root(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = tmp_path / "pvcs" / "models-claim" / "bert"
    shutil.copytree(checkpoints["text-classification"], claim)
    monkeypatch.setenv("MODELDEPLOY_PVC_ROOT", str(tmp_path / "pvcs"))
    result = build_repository(BuildOptions(source="pvc://models-claim/bert"), tmp_path / "repo")
    assert result.task is Task.TEXT_CLASSIFICATION


def test_vllm_repository(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "repo"
    source = f"file://{checkpoints['text-generation']}"
    result = build_repository(BuildOptions(source=source, device="gpu", max_sequence_length=48), out)
    assert result.format is ModelFormat.VLLM  # the auto rule: generation on GPUs
    config = (out / "model" / "config.pbtxt").read_text()
    validate_config(config, "vllm config")
    assert 'backend: "vllm"' in config and "decoupled: true" in config and "KIND_MODEL" in config
    engine = json.loads((out / "model" / "1" / "model.json").read_text())
    assert engine["max_model_len"] == 48 and engine["dtype"] == "float16"
    assert (Path(engine["model"]) / "model.safetensors").exists()
    assert not (out / "model" / "1" / "model.py").exists()


def test_gpu_python_config_uses_gpu_instances(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "repo"
    options = BuildOptions(
        source=f"file://{checkpoints['feature-extraction']}",
        device="gpu",
        instances_per_device=2,
        preferred_batch_sizes=(8, 16),
        response_cache=True,
    )
    build_repository(options, out)
    config = (out / "model" / "config.pbtxt").read_text()
    assert "kind: KIND_GPU count: 2" in config and "preferred_batch_size: [ 8, 16 ]" in config
    assert "response_cache { enable: true }" in config
    assert 'string_value: "float16"' in config


def test_invalid_config_text_is_a_build_error() -> None:
    with pytest.raises(BuildError, match="not a valid Triton model config"):
        validate_config('name: "x"\nmax_batch_size: "many"\n', "broken")


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("build")(cli.build)
    app.command("serve")(cli.serve)
    return app


def test_cli_build_and_cache_hit(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "repo"
    args = [
        "build",
        "--source",
        f"file://{checkpoints['fill-mask']}",
        "--out",
        str(out),
        "--model-name",
        "mlm",
    ]
    first = CliRunner().invoke(_app(), args)
    assert first.exit_code == 0, first.output
    assert "built:" in first.output and "task=fill-mask" in first.output
    assert (out / "mlm" / "config.pbtxt").exists() and (out / RECORD_FILE).exists()
    second = CliRunner().invoke(_app(), args)
    assert second.exit_code == 0 and "cache hit" in second.output


def test_cli_rejects_unknown_choices(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _app(), ["build", "--source", "file:///x", "--out", str(tmp_path), "--task", "nope"]
    )
    assert result.exit_code != 0 and "text-classification" in result.output


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.triton
def test_serve_prints_endpoints_and_stops_cleanly_on_sigterm(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    import sys

    from model_repo.triton import free_ports

    workdir = tmp_path / "serve-workdir"
    ports = [str(port) for port in free_ports(3)]
    command = [
        sys.executable,
        "-c",
        "import typer; from model_repo.cli import serve; typer.run(serve)",
        "--source",
        f"file://{checkpoints['text-classification']}",
        "--max-batch-size",
        "4",
        "--workdir",
        str(workdir),
        "--http-port",
        ports[0],
        "--grpc-port",
        ports[1],
        "--metrics-port",
        ports[2],
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parent.parent)}
    log = tmp_path / "serve.log"
    with serving(command, log, env=env, startup_s=300, stop_s=60):
        output = log.read_text()
        assert f"HTTP    http://127.0.0.1:{ports[0]}" in output, output
        assert f"gRPC    127.0.0.1:{ports[1]}" in output and f":{ports[2]}/metrics" in output
        assert "curl -s -X POST" in output and "tritonclient.http" in output
        serving_workdir = _processes_mentioning(f"--model-repository={workdir / 'repository'}")
        assert serving_workdir, "no tritonserver is serving the workdir"
    assert "tritonserver stopped" in log.read_text()
    assert _processes_mentioning(str(workdir)) == [], "serve left processes behind"


@pytest.mark.parametrize(
    ("gpus", "kind", "max_batch", "instances"), [(1, "KIND_GPU", 128, 2), (0, "KIND_CPU", 32, 1)]
)
def test_batching_defaults_are_the_gpu_ones_on_a_gpu_node_only(
    checkpoints: dict[str, Path], tmp_path: Path, gpus: int, kind: str, max_batch: int, instances: int
) -> None:
    """A ModelDeployment that sets no batching: the operator's builder flags for its pod, run through the
    real `modeldeploy build`, give the measured GPU defaults (model_repo.options.DEVICE_BATCHING) when it
    asks for a GPU and the CPU ones when it does not; the pod's /dev/shm is sized for those instances."""
    from modeldeploy.api import ModelDeployment
    from modeldeploy.manifests.common import builder_arguments
    from modeldeploy.manifests.deployment import shm_size_mib

    source = f"file://{checkpoints['feature-extraction']}"
    md = ModelDeployment.model_validate(
        {
            "apiVersion": "modeldeploy.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "embed", "namespace": "ml"},
            "spec": {"model": {"source": source}, "resources": {"gpus": gpus}},
        }
    )
    args = builder_arguments(md.spec, "model", str(tmp_path / "repo"))
    assert "--max-batch-size" not in args and "--instances-per-device" not in args
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    config = (tmp_path / "repo" / "model" / "config.pbtxt").read_text()
    assert f"max_batch_size: {max_batch}\n" in config
    assert f"kind: {kind} count: {instances}" in config
    pinned = md.model_copy(
        update={
            "spec": md.spec.model_copy(
                update={"triton": md.spec.triton.model_copy(update={"instances_per_device": 1})}
            )
        }
    )
    extra_instances = instances - 1
    assert (shm_size_mib(md) > shm_size_mib(pinned)) == (extra_instances > 0)
