"""The builder's progress reports from real builds: `modeldeploy build` outside a terminal writes one
report line per stage (what the operator reads from a pod's log), and a bucket download is measured in
bytes against the listing's sizes. Real builder, tiny checkpoints, no server."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import typer
from typer.testing import CliRunner

from model_repo import cli
from model_repo.fetch import BucketListing, _download_objects
from model_repo.progress import BuildProgress, Report, Stage, parse_line


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("build")(cli.build)
    app.command("serve")(cli.serve)
    return app


def _stages(stdout: str) -> list[Stage]:
    return [report.stage for line in stdout.splitlines() if (report := parse_line(line)) is not None]


def test_a_build_reports_each_stage_and_a_cache_hit_ends_after_inspecting(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    args = ["build", "--source", f"file://{checkpoints['fill-mask']}", "--out", str(tmp_path / "repo")]
    first = CliRunner().invoke(_app(), [*args, "--model-name", "mlm"])
    assert first.exit_code == 0, first.output
    assert _stages(first.stdout) == [
        Stage.DOWNLOAD,
        Stage.INSPECT,
        Stage.LOAD,
        Stage.VERIFY,
        Stage.EXPORT,
        Stage.WRITE,
        Stage.DONE,
    ]
    second = CliRunner().invoke(_app(), [*args, "--model-name", "mlm"])
    assert second.exit_code == 0, second.output
    assert _stages(second.stdout) == [Stage.DOWNLOAD, Stage.INSPECT, Stage.DONE]


def test_a_bucket_download_is_measured_against_the_listed_sizes(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    source = checkpoints["text-classification"]
    objects = {path.name: path for path in source.iterdir() if path.is_file()}

    def download(path: Path, target: Path) -> None:
        time.sleep(0.05)  # a little time on the wire, so the sampler sees the files grow
        shutil.copyfile(path, target)

    listing = BucketListing(
        objects,
        url_of=lambda path: f"s3://bucket/{path.name}",
        download=download,
        size_of=lambda path: path.stat().st_size,
    )
    reports: list[Report] = []
    said: list[str] = []
    dest = tmp_path / "download"
    dest.mkdir()
    fetched = _download_objects(listing, dest, False, BuildProgress(said.append, report=reports.append))
    wanted = sum((source / name).stat().st_size for name in fetched.files)
    final = reports[-1]
    assert (final.stage, final.bytes_done, final.bytes_total, final.percent) == (
        Stage.DOWNLOAD,
        wanted,
        wanted,
        100.0,
    )
    assert said == [f"downloading s3://bucket/{name}" for name in fetched.files]
