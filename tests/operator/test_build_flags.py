"""One table of builder flags (model_repo.options.BUILD_FLAGS): the operator writes a build container's
arguments with `BuildOptions.to_args()`, and the builder's own CLI parses them back into the very same
BuildOptions, for every option."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from md_fixtures import md_of
from typer.testing import CliRunner

from model_repo.cli import BUILD_PARAMETERS, with_build_options
from model_repo.options import BUILD_FLAGS, BuildOptions, DType, ModelFormat, Quantization, Task
from modeldeploy.manifests.common import build_options, builder_arguments


def _parse(args: list[str]) -> tuple[BuildOptions, Path]:
    """The BuildOptions and --out that `modeldeploy build` would receive for `args` (its own options)."""
    received: list[tuple[BuildOptions, Path]] = []

    @with_build_options
    def build(options: BuildOptions, out: Annotated[Path, typer.Option("--out")]) -> None:
        received.append((options, out))

    app = typer.Typer()
    app.command("build")(build)
    app.command("other")(lambda: None)  # two commands: `build` stays a subcommand, as in modeldeploy
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (parsed,) = received
    return parsed


def test_every_build_option_has_one_flag_and_the_cli_declares_each() -> None:
    fields = [field.name for field in dataclasses.fields(BuildOptions)]
    assert sorted(spec.field for spec in BUILD_FLAGS) == sorted(fields)
    assert len({spec.flag for spec in BUILD_FLAGS}) == len(BUILD_FLAGS)
    assert [parameter.name for parameter in BUILD_PARAMETERS] == [spec.field for spec in BUILD_FLAGS]


SPECS: dict[str, list[dict[str, Any]]] = {
    "defaults": [],
    "int8-everything": [
        {
            "model": {"revision": "main", "trustRemoteCode": True, "allowNewHead": True},
            "triton": {
                "format": "python",
                "maxBatchSize": 12,
                "dynamicBatching": {"maxQueueDelayMicroseconds": 100, "preferredBatchSizes": [4, 12]},
                "instancesPerDevice": 2,
                "maxSequenceLength": 64,
                "responseCache": True,
                "quantization": "int8",
                "accuracyFloor": 0.95,
                "calibration": {"configMapName": "texts", "key": "lines.txt"},
            },
        }
    ],
    "generation-gpu": [
        {
            "model": {"source": "hf://org/chat", "task": "text-generation"},
            "triton": {"dtype": "bfloat16", "maxConcurrentSequences": 8, "maxTokens": 256},
            "resources": {"gpus": 1},
        }
    ],
}


SOURCE = "hf://google-bert/bert-base-uncased"
EXPECTED = {
    "defaults": BuildOptions(source=SOURCE, task=Task.TEXT_CLASSIFICATION, model_name="bert"),
    "int8-everything": BuildOptions(
        source=SOURCE,
        revision="main",
        task=Task.TEXT_CLASSIFICATION,
        format=ModelFormat.PYTHON,
        max_batch_size=12,
        max_queue_delay_us=100,
        preferred_batch_sizes=(4, 12),
        instances_per_device=2,
        max_sequence_length=64,
        response_cache=True,
        trust_remote_code=True,
        model_name="bert",
        allow_new_head=True,
        quantization=Quantization.INT8,
        accuracy_floor=0.95,
        calibration_file="/etc/modeldeploy/calibration/lines.txt",
    ),
    "generation-gpu": BuildOptions(
        source="hf://org/chat",
        task=Task.TEXT_GENERATION,
        dtype=DType.BFLOAT16,
        device="gpu",
        model_name="bert",
        max_concurrent_sequences=8,
        max_tokens=256,
    ),
}


@pytest.mark.parametrize("name", SPECS)
def test_a_spec_reaches_the_builder_as_its_build_options(name: str) -> None:
    """spec -> BuildOptions -> the container's argv -> the builder's CLI -> the same BuildOptions."""
    spec = md_of(*SPECS[name]).spec
    assert build_options(spec, "bert") == EXPECTED[name]
    parsed, out = _parse(builder_arguments(spec, "bert", "/models/out"))
    assert parsed == EXPECTED[name] and out == Path("/models/out")


# Every option away from its default: the int8-everything spec's build options with the options of generation
# on a GPU set too.
EVERY_OPTION_SET = dataclasses.replace(
    EXPECTED["int8-everything"], dtype=DType.BFLOAT16, device="gpu", max_concurrent_sequences=5, max_tokens=77
)


@pytest.mark.parametrize("options", [EVERY_OPTION_SET, BuildOptions(source="file:///m")], ids=["all", "none"])
def test_options_round_trip_through_the_flags(options: BuildOptions) -> None:
    # Every field differs from its default in one case and keeps it in the other.
    defaults = BuildOptions(source="x")
    changed = {
        f.name
        for f in dataclasses.fields(BuildOptions)
        if getattr(options, f.name) != getattr(defaults, f.name)
    }
    assert changed in ({f.name for f in dataclasses.fields(BuildOptions)}, {"source"})
    parsed, out = _parse(["build", *options.to_args(), "--out", "/out"])
    assert parsed == options and out == Path("/out")
