"""Build progress: the reports the builder writes as it goes, and how the operator reads them back.

A report is one log line, `modeldeploy-progress: {json}`, so that whoever can read the builder's log (the
operator, through the API server's pods/log; a person, with kubectl logs) can follow a build; the
terminal shows the same report as a sentence. The download stage measures bytes (done, total, rate,
time left); later stages say which one runs. Pure except `watch_download`, which samples a directory.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from model_repo.errors import BuildError
from model_repo.options import Progress

REPORT_PREFIX = "modeldeploy-progress: "
# No new byte for this long and a download is stalled (a failure, with its own reason).
DEFAULT_STALL_SECONDS = 300
# The rate is measured over this window: long enough to smooth bursts, short enough to follow a change.
RATE_WINDOW_SECONDS = 10.0
# How often the download is sampled and reported (the operator reads no faster than this either).
SAMPLE_SECONDS = 2.0
STALLED_MESSAGE = "download stalled"


class Stage(StrEnum):
    """The stages of a build, in order (a stage may be skipped: no optimisation without a gate)."""

    DOWNLOAD = "download"
    INSPECT = "inspect"
    LOAD = "load"
    VERIFY = "verify"
    OPTIMISE = "optimise"
    EXPORT = "export"
    WRITE = "write"
    DONE = "done"
    STALLED = "stalled"


_ORDER = [stage for stage in Stage if stage not in (Stage.DONE, Stage.STALLED)]


class DownloadStalled(BuildError):
    """No byte arrived for the stall timeout."""


@dataclass(frozen=True)
class Report:
    """One progress report. Byte figures are set for the download stage only; `percent` never decreases
    within a download; `eta_seconds` is None while the rate is unknown (no byte yet, or no total)."""

    stage: Stage
    message: str
    percent: float | None = None
    bytes_done: int | None = None
    bytes_total: int | None = None
    bytes_per_second: float | None = None
    eta_seconds: float | None = None
    # Seconds since the last byte arrived (download only).
    idle_seconds: float | None = None
    # The file that grew most since the last report.
    file: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    def to_line(self) -> str:
        return REPORT_PREFIX + json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: Any) -> Report | None:
        """The report `data` holds; None if it is not one (another builder version's, or garbage)."""
        if not isinstance(data, dict):
            return None
        try:
            file = data.get("file")
            return cls(
                stage=Stage(data["stage"]),
                message=str(data.get("message", "")),
                percent=_number(data.get("percent")),
                bytes_done=_count(data.get("bytes_done")),
                bytes_total=_count(data.get("bytes_total")),
                bytes_per_second=_number(data.get("bytes_per_second")),
                eta_seconds=_number(data.get("eta_seconds")),
                idle_seconds=_number(data.get("idle_seconds")),
                file=str(file) if file is not None else None,
            )
        except (KeyError, ValueError, TypeError):
            return None

    @property
    def step(self) -> str:
        """ "3/7": which stage of how many."""
        if self.stage not in _ORDER:
            return ""
        return f"{_ORDER.index(self.stage) + 1}/{len(_ORDER)}"

    def describe(self) -> str:
        """The report as a sentence: "downloading 1.2 GiB of 4.8 GiB (25%), 85 MiB/s, about 42 s left"."""
        if self.stage is not Stage.DOWNLOAD or self.bytes_done is None:
            return self.message
        parts = [f"downloading {human_bytes(self.bytes_done)}"]
        if self.bytes_total is not None:
            parts[0] += f" of {human_bytes(self.bytes_total)}"
        if self.percent is not None:
            parts[0] += f" ({self.percent:.0f}%)"
        if self.bytes_per_second is not None:
            parts.append(f"{human_bytes(self.bytes_per_second)}/s")
        if self.eta_seconds is not None:
            parts.append(f"about {human_duration(self.eta_seconds)} left")
        elif self.idle_seconds is not None and self.idle_seconds >= SAMPLE_SECONDS * 2:
            parts.append(f"no bytes for {human_duration(self.idle_seconds)}")
        return ", ".join(parts)

    def summary(self) -> str:
        """A few characters for `kubectl get`: "download 25% 42s", "optimise 5/7"."""
        if self.stage is Stage.DOWNLOAD:
            shown = [self.stage.value]
            if self.percent is not None:
                shown.append(f"{self.percent:.0f}%")
            if self.eta_seconds is not None:
                shown.append(human_duration(self.eta_seconds).replace(" ", ""))
            return " ".join(shown)
        return f"{self.stage.value} {self.step}".strip()


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(value)
    return float(value)


def _count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(value)
    return value


def parse_line(line: str) -> Report | None:
    """The report on one log line (a kubelet timestamp or other prefix before it is allowed)."""
    _, found, rest = line.partition(REPORT_PREFIX)
    if not found:
        return None
    try:
        return Report.from_json(json.loads(rest))
    except ValueError:
        return None


def latest_report(log: str) -> Report | None:
    """The last report in a log (its tail); None if it holds none."""
    for line in reversed(log.splitlines()):
        report = parse_line(line)
        if report is not None:
            return report
    return None


def human_bytes(count: float) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    if whole < 100:
        return f"{whole} s"
    if whole < 100 * 60:
        return f"{round(whole / 60)} min"
    return f"{whole / 3600:.1f} h"


class DownloadMeter:
    """Bytes done of a total, and the rate and time left, from samples of how many bytes are on disk.

    Bytes already there when the meter starts (a resumed download) count as done, never towards the
    rate. The bytes done never decrease (a file renamed into place can be missed by one sample), so
    neither does the percent; without a total there is no percent and no time left."""

    def __init__(
        self,
        total: int | None,
        initial: int = 0,
        clock: Callable[[], float] = time.monotonic,
        window: float = RATE_WINDOW_SECONDS,
    ) -> None:
        self.total = total if total is None or total >= 0 else None
        self._clock = clock
        self._window = window
        self.done = self._clamp(initial)
        now = clock()
        self._samples: deque[tuple[float, int]] = deque([(now, self.done)])
        self._last_growth = now

    def _clamp(self, done: int) -> int:
        done = max(0, done)
        return min(done, self.total) if self.total is not None else done

    def update(self, on_disk: int, file: str | None = None) -> Report:
        now = self._clock()
        done = max(self.done, self._clamp(on_disk))
        if done > self.done:
            self._last_growth = now
        self.done = done
        self._samples.append((now, done))
        # Keep one sample at or before the window's start, so the rate spans the whole window.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self._window:
            self._samples.popleft()
        first_time, first_done = self._samples[0]
        elapsed = now - first_time
        rate = (done - first_done) / elapsed if elapsed > 0 else None
        percent = None
        eta = None
        if self.total is not None:
            percent = 100.0 if self.total == 0 else 100.0 * done / self.total
            remaining = self.total - done
            if remaining <= 0:
                eta = 0.0
            elif rate:
                eta = remaining / rate
        return Report(
            stage=Stage.DOWNLOAD,
            message="downloading",
            percent=percent,
            bytes_done=done,
            bytes_total=self.total,
            bytes_per_second=rate,
            eta_seconds=eta,
            idle_seconds=now - self._last_growth,
            file=file,
        )


def directory_sizes(root: Path) -> dict[str, int]:
    """Every regular file under `root` (partial downloads included) and its size."""
    sizes: dict[str, int] = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            try:
                sizes[str(path.relative_to(root))] = path.lstat().st_size
            except OSError:  # renamed or removed between listing and reading
                continue
    return sizes


def _grown_most(before: dict[str, int], after: dict[str, int]) -> str | None:
    growth = {name: size - before.get(name, 0) for name, size in after.items()}
    name = max(growth, key=lambda key: growth[key], default=None)
    if name is None or growth[name] <= 0:
        return None
    # A partial download is named after its file (huggingface_hub: <name>.incomplete under .cache).
    return Path(name).name.split(".incomplete")[0] if name.endswith(".incomplete") else name


Reporter = Callable[[Report], None]


@contextmanager
def watch_download(
    root: Path,
    total: int | None,
    report: Reporter,
    stall_seconds: float = DEFAULT_STALL_SECONDS,
    on_stall: Callable[[str], None] | None = None,
    interval: float = SAMPLE_SECONDS,
) -> Iterator[DownloadMeter]:
    """Report the download into `root` every `interval` while the block runs. With no byte for
    `stall_seconds` (0: never), it reports the stall and calls `on_stall` (the CLI ends the process: a
    blocked download cannot be interrupted from here); the block raises DownloadStalled when it ends."""
    meter = DownloadMeter(total, initial=sum(directory_sizes(root).values()))
    stopped = threading.Event()
    stalled: list[str] = []

    def sample(previous: dict[str, int]) -> dict[str, int]:
        sizes = directory_sizes(root)
        current = meter.update(sum(sizes.values()), _grown_most(previous, sizes))
        if stall_seconds and (current.idle_seconds or 0) >= stall_seconds and not stalled:
            message = (
                f"{STALLED_MESSAGE}: no bytes for {human_duration(current.idle_seconds or 0)} "
                f"(limit {human_duration(stall_seconds)}) after {human_bytes(current.bytes_done or 0)}"
                + (f" of {human_bytes(total)}" if total is not None else "")
            )
            stalled.append(message)
            report(replace(current, stage=Stage.STALLED, message=message))
            if on_stall is not None:
                on_stall(message)
        elif not stalled:
            report(replace(current, message=current.describe()))
        return sizes

    def run() -> None:
        previous = directory_sizes(root)
        while not stopped.wait(interval):
            previous = sample(previous)

    thread = threading.Thread(target=run, name="download-progress", daemon=True)
    thread.start()
    try:
        yield meter
    finally:
        stopped.set()
        thread.join()
    if stalled:
        raise DownloadStalled(stalled[0])
    sample({})


class BuildProgress:
    """A build's progress: plain sentences go to `say` (it is a `Progress` itself); stage changes and
    download samples go to `report` as reports, or, without a report sink, to `say` as sentences."""

    def __init__(
        self,
        say: Progress,
        report: Reporter | None = None,
        stall_seconds: float = DEFAULT_STALL_SECONDS,
        on_stall: Callable[[str], None] | None = None,
    ) -> None:
        self.say = say
        self.report = report
        self.stall_seconds = stall_seconds
        self.on_stall = on_stall

    def __call__(self, message: str) -> None:
        self.say(message)

    def _emit(self, report: Report) -> None:
        if self.report is not None:
            self.report(report)
        else:
            self.say(report.describe())

    def stage(self, stage: Stage, message: str) -> None:
        self._emit(Report(stage=stage, message=message))

    @contextmanager
    def watching(self, root: Path, total: int | None) -> Iterator[DownloadMeter]:
        with watch_download(root, total, self._emit, self.stall_seconds, self.on_stall) as meter:
            yield meter


def build_progress(progress: Progress) -> BuildProgress:
    """`progress` as a BuildProgress (a plain callable hears stages and downloads as sentences)."""
    return progress if isinstance(progress, BuildProgress) else BuildProgress(progress)
