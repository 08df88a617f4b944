"""What the numbers were measured on: CPU, memory, GPU, load, library versions."""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

VERSIONED_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "tritonclient",
    "nvidia-pytriton",
    "fastapi",
    "uvicorn",
)


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s*(\d+) kB", text, re.MULTILINE)
    return round(int(match.group(1)) / 2**20, 1) if match else None


def _gpus() -> list[str]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


def _versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def describe_machine() -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": cores,
        "memory_gib": _memory_gib(),
        "gpus": _gpus(),
        "platform": platform.platform(),
        "load_average_at_start": [round(value, 2) for value in load_average()],
        "versions": _versions(),
    }


def machine_line(machine: dict[str, Any]) -> str:
    gpus = ", ".join(machine["gpus"]) or "no GPU"
    load = machine.get("load_average_at_start")
    load_text = f"; load average at start {load[0]:.2f} (1 min)" if load else ""
    return f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB RAM, {gpus}{load_text}"


def _descendants(root: int) -> set[int]:
    """`root` and every process below it (servers the benchmark started, their stubs, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _process_ticks(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def _tree_ticks(root: int) -> int:
    """CPU ticks of `root` and its descendants, counting those that have exited too: a reaped child's
    time moves into its parent's cutime/cstime (a load generator that ran for one level and exited)."""
    total = 0
    for pid in _descendants(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return total


def process_role(pid: int) -> str:
    """`tritonserver`, `stub <model>` for a Python-backend stub (its model directory's name), or the
    program's name; "gone" once the process has exited."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    program = os.path.basename(argv[0].decode(errors="replace"))
    if "stub" in program and len(argv) > 1:
        return "stub " + Path(argv[1].decode(errors="replace")).parents[1].name
    return program


def cpu_ticks_by_role(pids: Iterable[int], role: Callable[[int], str] = process_role) -> dict[str, int]:
    """CPU ticks (user + system) the running processes `pids` have used so far, summed per `role`."""
    totals: dict[str, int] = {}
    for pid in pids:
        name = role(pid)
        totals[name] = totals.get(name, 0) + _process_ticks({pid})
    return totals


def _busy_ticks() -> int:
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle


class ForeignCpu:
    """CPU time used on this machine by processes that are not this benchmark or its servers.

    The machine is shared; a measurement during which other work ran is not one of the contender alone.
    Linux only (reads /proc); elsewhere it reports 0.
    """

    def __init__(self) -> None:
        self.available = Path("/proc/stat").exists()
        self._tick = os.sysconf("SC_CLK_TCK") if self.available else 100
        self._start: tuple[float, int, int] = (0.0, 0, 0)
        self._start_by_role: dict[str, int] = {}
        # Cores each kind of the benchmark's own processes kept busy between the last start and stop
        # (tritonserver, the stubs, this process as client or in-process model, a sidecar): on a machine
        # with few cores what the client and the server's helpers take is taken from the model.
        self.cores_by_role: dict[str, float] = {}

    def _sample(self) -> tuple[float, int, int]:
        import time

        if not self.available:
            return (time.monotonic(), 0, 0)
        return (time.monotonic(), _busy_ticks(), _tree_ticks(os.getpid()))

    @staticmethod
    def _ticks_by_role() -> dict[str, int]:
        own = os.getpid()

        def role(pid: int) -> str:
            return "this benchmark's process" if pid == own else process_role(pid)

        return cpu_ticks_by_role(_descendants(own), role)

    def start(self) -> None:
        self._start = self._sample()
        self._start_by_role = self._ticks_by_role() if self.available else {}

    def stop(self) -> tuple[float, float]:
        """(foreign CPU seconds, share of the whole machine's capacity) since `start`."""
        began, busy0, own0 = self._start
        ended, busy1, own1 = self._sample()
        foreign = max(0.0, ((busy1 - busy0) - (own1 - own0)) / self._tick)
        capacity = max(1e-9, (ended - began) * (os.cpu_count() or 1))
        if self.available:
            # A process that started after `start` counts from zero; one that exited is not counted.
            by_role = self._ticks_by_role()
            seconds = max(1e-9, ended - began)
            self.cores_by_role = {
                role: round(max(0, ticks - self._start_by_role.get(role, 0)) / self._tick / seconds, 3)
                for role, ticks in sorted(by_role.items())
            }
        return foreign, foreign / capacity
