"""Build progress: the report format, the download meter's figures (rate, percent, time left) and the
watchdog that samples a real directory while bytes arrive or stop arriving. No checkpoint, no server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from model_repo.progress import (
    REPORT_PREFIX,
    BuildProgress,
    DownloadMeter,
    DownloadStalled,
    Report,
    Stage,
    human_bytes,
    latest_report,
    parse_line,
    watch_download,
)
from modeldeploy_dev.manual_clock import ManualClock

GIB = 1024**3
MIB = 1024**2


def test_meter_rate_percent_and_eta() -> None:
    clock = ManualClock(1000.0)
    meter = DownloadMeter(total=int(4.8 * GIB), clock=clock)
    clock.now += 1
    meter.update(85 * MIB)
    clock.now += 14
    report = meter.update(int(1.2 * GIB))
    assert report.percent == pytest.approx(25.0)
    # The rate spans the window (10 s) from the last sample at or before its start.
    rate = (int(1.2 * GIB) - 85 * MIB) / 14
    assert report.bytes_per_second == pytest.approx(rate)
    assert report.eta_seconds == pytest.approx((int(4.8 * GIB) - int(1.2 * GIB)) / rate)
    assert report.describe() == "downloading 1.2 GiB of 4.8 GiB (25%), 81.7 MiB/s, about 45 s left"
    assert report.summary() == "download 25% 45s"


def test_meter_without_bytes_or_total_divides_by_nothing() -> None:
    clock = ManualClock(1000.0)
    # Two samples at the same instant: no rate, so no time left (not a division by zero).
    meter = DownloadMeter(total=100, clock=clock)
    first = meter.update(0)
    assert (first.bytes_per_second, first.eta_seconds, first.percent) == (None, None, 0.0)
    clock.now += 5
    idle = meter.update(0)
    assert (idle.bytes_per_second, idle.eta_seconds, idle.idle_seconds) == (0.0, None, 5.0)
    # No total: bytes and rate, never a percent or a time left.
    unknown = DownloadMeter(total=None, clock=clock)
    clock.now += 2
    report = unknown.update(10 * MIB)
    assert (report.percent, report.eta_seconds) == (None, None)
    assert report.bytes_per_second == pytest.approx(5 * MIB)
    # An empty checkpoint is done at once.
    assert DownloadMeter(total=0, clock=clock).update(0).percent == 100.0


def test_meter_percent_never_decreases_and_stays_within_total() -> None:
    clock = ManualClock(1000.0)
    meter = DownloadMeter(total=1000, clock=clock)
    seen = []
    # A sample that misses a file being renamed into place reads fewer bytes than the one before.
    for on_disk in (100, 400, 250, 600, 2000, 900):
        clock.now += 1
        seen.append(meter.update(on_disk).percent)
    assert seen == [10.0, 40.0, 40.0, 60.0, 100.0, 100.0]
    final = meter.update(1000)
    assert final.eta_seconds == 0.0


def test_resumed_download_counts_present_bytes_as_done_but_not_towards_the_rate() -> None:
    clock = ManualClock(1000.0)
    meter = DownloadMeter(total=1000, initial=500, clock=clock)
    clock.now += 10
    report = meter.update(600)
    assert report.percent == 60.0
    assert report.bytes_per_second == pytest.approx(10.0)  # 100 bytes in 10 s, not 600
    assert report.eta_seconds == pytest.approx(40.0)


def test_rate_follows_the_recent_window() -> None:
    clock = ManualClock(1000.0)
    meter = DownloadMeter(total=None, clock=clock, window=10.0)
    for _ in range(20):  # fast for 20 s
        clock.now += 1
        meter.update((meter.done or 0) + 100)
    for _ in range(20):  # then slow
        clock.now += 1
        report = meter.update(meter.done + 10)
    assert report.bytes_per_second == pytest.approx(10.0)


def test_report_line_round_trips_and_bad_lines_are_ignored() -> None:
    report = Report(
        Stage.DOWNLOAD, "downloading", percent=12.5, bytes_done=10, bytes_total=80, bytes_per_second=2.0,
        eta_seconds=35.0, idle_seconds=0.0, file="model.safetensors",
    )  # fmt: skip
    line = report.to_line()
    assert line.startswith(REPORT_PREFIX)
    assert parse_line(line) == report
    assert parse_line("2026-12-04T19:00:00.1Z " + line) == report  # kubectl logs --timestamps
    assert parse_line("modeldeploy: fetching hf://x") is None
    assert parse_line(REPORT_PREFIX + "{not json") is None
    assert parse_line(REPORT_PREFIX + '{"stage": "teleport"}') is None
    assert parse_line(REPORT_PREFIX + '{"stage": "download", "bytes_done": "many"}') is None
    log = "\n".join([Report(Stage.LOAD, "loading").to_line(), line, "modeldeploy: a sentence", "garbage"])
    assert latest_report(log) == report
    assert latest_report("no reports here\n") is None


def test_stage_reports_name_the_step() -> None:
    assert Report(Stage.OPTIMISE, "gate").summary() == "optimise 5/7"
    assert Report(Stage.DONE, "wrote").summary() == "done"
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"


def test_watchdog_reports_a_growing_download(tmp_path: Path) -> None:
    reports: list[Report] = []
    partial = tmp_path / ".cache" / "huggingface" / "download" / "model.safetensors.incomplete"
    partial.parent.mkdir(parents=True)
    (tmp_path / "config.json").write_bytes(b"x" * 100)  # already there: a resumed download
    with watch_download(tmp_path, total=1100, report=reports.append, stall_seconds=5, interval=0.05):
        for _ in range(10):
            with partial.open("ab") as handle:
                handle.write(b"y" * 100)
            time.sleep(0.03)
    downloads = [report for report in reports if report.stage is Stage.DOWNLOAD]
    assert downloads, reports
    assert downloads[-1].bytes_done == 1100
    assert downloads[-1].percent == 100.0
    percents = [report.percent for report in downloads]
    assert percents == sorted(percents)
    assert "model.safetensors" in {report.file for report in downloads}
    assert not any(report.stage is Stage.STALLED for report in reports)


def test_watchdog_fails_a_stalled_download(tmp_path: Path) -> None:
    reports: list[Report] = []
    stalls: list[str] = []
    (tmp_path / "part").write_bytes(b"z" * 10)
    release = threading.Event()
    with (
        pytest.raises(DownloadStalled, match="download stalled: no bytes for"),
        watch_download(
            tmp_path, 1000, reports.append, stall_seconds=0.3, on_stall=stalls.append, interval=0.05
        ),
    ):
        # The download blocks (as a dead connection does) until the watchdog gives up on it.
        deadline = time.monotonic() + 10
        while not stalls and time.monotonic() < deadline:
            release.wait(0.05)
    assert len(stalls) == 1
    stalled = [report for report in reports if report.stage is Stage.STALLED]
    assert len(stalled) == 1 and stalled[0].bytes_done == 10 and stalled[0].message == stalls[0]


def test_without_a_report_sink_progress_is_sentences() -> None:
    said: list[str] = []
    progress = BuildProgress(said.append)
    progress.stage(Stage.VERIFY, "loading weights to verify them")
    progress("a plain message")
    assert said == ["loading weights to verify them", "a plain message"]
