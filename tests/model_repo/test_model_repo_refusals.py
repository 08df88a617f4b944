"""The builder never destroys what it did not write, and refuses a task that does not fit the checkpoint.

Real builder, real tiny checkpoints, the real CLI; no server.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from model_repo import cli
from model_repo.build import build_repository
from model_repo.errors import BuildError
from model_repo.options import MAX_BATCH_SIZE_LIMIT, BuildOptions, Task
from model_repo.output_dir import RECORD_FILE, read_record


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("build")(cli.build)
    app.command("serve")(cli.serve)  # two commands, so that the first argument names one
    return app


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with its content's hash, and every directory, relative."""
    found: dict[str, str] = {}
    for directory, subdirectories, files in os.walk(root):
        base = Path(directory).relative_to(root)
        for name in subdirectories:
            found[str(base / name) + "/"] = "dir"
        for name in files:
            found[str(base / name)] = hashlib.sha256((Path(directory) / name).read_bytes()).hexdigest()
    return found


def _user_directory(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "notes.txt").write_text("important\n")
    (root / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return root


# -- --out ---------------------------------------------------------------------------------------------


def test_out_that_is_not_a_repository_survives_a_refused_build(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    out = _user_directory(tmp_path / "x")
    before = _snapshot(out)
    args = ["build", "--source", f"file://{checkpoints['text-classification']}", "--out", str(out)]
    refused = CliRunner().invoke(_app(), args)
    assert refused.exit_code != 0
    assert "is not a repository this builder wrote" in refused.output, refused.output
    assert "notes.txt" in refused.output and "--force" in refused.output
    assert _snapshot(out) == before, "a refused build changed the user's directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"], "a refused build left files behind"

    forced = CliRunner().invoke(_app(), [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert not (out / "notes.txt").exists() and (out / RECORD_FILE).exists()


def test_empty_out_directory_is_used(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    result = build_repository(BuildOptions(source=f"file://{checkpoints['text-classification']}"), out)
    assert not result.cache_hit and (out / RECORD_FILE).exists()


def test_foreign_files_in_a_repository_are_refused_not_deleted(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "repo"
    source = f"file://{checkpoints['text-classification']}"
    first = build_repository(BuildOptions(source=source), out)
    record = read_record(out)
    assert record is not None and "model/config.pbtxt" in record["files"]
    (out / "README.txt").write_text("my notes about this model\n")
    (out / "model" / "1" / "extra.json").write_text("{}")
    before = _snapshot(out)

    # A cache hit deletes nothing, but a rebuild would: both are refused, the files named.
    for options in (BuildOptions(source=source), BuildOptions(source=source, max_batch_size=4)):
        with pytest.raises(BuildError, match=r"holds files the builder did not write: README\.txt") as caught:
            build_repository(options, out)
        assert "model/1/extra.json" in str(caught.value) and "--force" in str(caught.value)
        assert _snapshot(out) == before
    assert read_record(out) == record and first.digest == record["digest"]

    rebuilt = build_repository(BuildOptions(source=source, max_batch_size=4), out, force=True)
    assert not rebuilt.cache_hit and not (out / "README.txt").exists()
    assert not (out / "model" / "1" / "extra.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_a_build_in_a_cache_volume_leaves_other_digests_alone(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """The build Job's layout: one `<digest>` directory per repository in a shared volume, which running
    pods of other digests read at the same time."""
    cache = tmp_path / "cache"
    serving = cache / "0123456789abcdef"
    build_repository(BuildOptions(source=f"file://{checkpoints['feature-extraction']}"), serving)
    stale = cache / ".fedcba9876543210.tmp-crashed"  # what a killed build Job leaves
    stale.mkdir()
    (stale / "partial").write_text("x")
    untouched = _snapshot(cache)

    target = cache / "fedcba9876543210"
    source = f"file://{checkpoints['text-classification']}"
    build_repository(BuildOptions(source=source), target)
    build_repository(BuildOptions(source=source, max_batch_size=4), target)  # a rebuild swaps it
    with pytest.raises(BuildError, match="does not fit"):  # a failed build
        build_repository(BuildOptions(source=source, task=Task.TOKEN_CLASSIFICATION), target)
    after = _snapshot(cache)
    assert {key: value for key, value in after.items() if not key.startswith(target.name)} == untouched
    assert "max_batch_size: 4" in (target / "model" / "config.pbtxt").read_text()


# -- task against checkpoint -----------------------------------------------------------------------------

MISMATCHES = [
    # checkpoint, requested task, what the message must say about why
    ("token-classification", Task.TEXT_CLASSIFICATION, r"bert\.pooler\.dense\.\w+.* newly initialised"),
    ("text-classification", Task.TOKEN_CLASSIFICATION, r"trained for text-classification"),
    ("text-classification", Task.FILL_MASK, r"cls\.predictions\..* newly initialised"),
    ("text-generation", Task.FEATURE_EXTRACTION, r"trained for text-generation"),
    ("fill-mask", Task.TEXT_GENERATION, r"trained for fill-mask"),
]
ARCHITECTURES = {
    "text-classification": "BertForSequenceClassification",
    "token-classification": "BertForTokenClassification",
    "feature-extraction": "BertModel",
    "fill-mask": "BertForMaskedLM",
    "text-generation": "GPT2LMHeadModel",
}


@pytest.mark.parametrize(
    ("checkpoint", "task", "why"),
    MISMATCHES,
    ids=[f"{task.value}-on-{checkpoint}" for checkpoint, task, _ in MISMATCHES],
)
def test_task_that_does_not_fit_the_checkpoint_is_refused_unless_allowed(
    checkpoint: str, task: Task, why: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out" / "repo"
    args = ["build", "--source", f"file://{checkpoints[checkpoint]}", "--out", str(out), "--task", task.value]
    refused = CliRunner().invoke(_app(), args)
    assert refused.exit_code != 0
    message = " ".join(refused.output.split())  # rich wraps nothing, but be safe about line breaks
    assert f"task {task.value} does not fit this checkpoint" in message, message
    assert f"Its architectures: {ARCHITECTURES[checkpoint]}" in message
    also = {"fill-mask": ", feature-extraction", "text-classification": ", text-ranking"}
    supported = checkpoint + also.get(checkpoint, "")
    assert f"tasks it supports: {supported}." in message
    assert "--allow-new-head" in message and "spec.model.allowNewHead" in message
    assert re.search(why, message), message
    assert not out.exists() and os.listdir(out.parent) == []

    allowed = CliRunner().invoke(_app(), [*args, "--allow-new-head"])
    assert allowed.exit_code == 0, allowed.output
    record = read_record(out)
    assert record is not None and record["task"] == task.value and record["allow_new_head"] is True


@pytest.mark.parametrize(
    ("checkpoint", "task"),
    [
        ("fill-mask", Task.FEATURE_EXTRACTION),  # a pretrained encoder's hidden states
        ("token-classification", Task.TOKEN_CLASSIFICATION),
        ("text-generation", Task.TEXT_GENERATION),
    ],
)
def test_tasks_that_fit_build(
    checkpoint: str, task: Task, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    result = build_repository(
        BuildOptions(source=f"file://{checkpoints[checkpoint]}", task=task), tmp_path / "r"
    )
    assert result.task is task


def test_sentence_transformers_checkpoint_without_pooler_serves_feature_extraction(
    minilm_path: Path, tmp_path: Path
) -> None:
    result = build_repository(BuildOptions(source=f"file://{minilm_path}"), tmp_path / "minilm")
    assert result.task is Task.FEATURE_EXTRACTION


# -- bounded work ----------------------------------------------------------------------------------------


def test_cli_refuses_an_unbounded_max_batch_size(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "repo"
    source = f"file://{checkpoints['text-classification']}"
    result = CliRunner().invoke(
        _app(), ["build", "--source", source, "--out", str(out), "--max-batch-size", "100000"]
    )
    assert result.exit_code != 0
    assert f"--max-batch-size 100000 must be between 1 and {MAX_BATCH_SIZE_LIMIT}" in result.output
    assert not out.exists()


def test_record_lists_every_file_written(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "repo"
    build_repository(BuildOptions(source=f"file://{checkpoints['fill-mask']}"), out)
    record = json.loads((out / RECORD_FILE).read_text())
    on_disk = sorted(key for key in _snapshot(out) if not key.endswith("/") and key != RECORD_FILE)
    assert record["files"] == on_disk


def test_repository_of_an_older_builder_is_judged_by_its_model_directories(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """Records written before the file list existed name the model; its directories are the builder's."""
    out = tmp_path / "repo"
    source = f"file://{checkpoints['text-classification']}"
    build_repository(BuildOptions(source=source), out)
    record = json.loads((out / RECORD_FILE).read_text())
    del record["files"]
    (out / RECORD_FILE).write_text(json.dumps(record))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match=r"holds files the builder did not write: notes\.txt\. "):
        build_repository(BuildOptions(source=source, max_batch_size=4), out)
    (out / "notes.txt").unlink()
    assert not build_repository(BuildOptions(source=source, max_batch_size=4), out).cache_hit
