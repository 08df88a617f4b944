"""NVIDIA's perf_analyzer as the load generator for Triton contenders: find it, feed it the workload's texts,
run one closed-loop measurement, and read back its client- and server-side figures.

perf_analyzer is a C++ program with its own threads, so unlike the Python generator it is not one GIL away
from saturation. Each run also records the CPU time perf_analyzer itself used (from the kernel's rusage of
the child process), so a client near its own limit shows in the results.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The real perf_analyzer (PyPI perf-analyzer); bench/common/install_perf_analyzer.sh installs this version.
VERSION = "2.60.0"
INSTALL_SCRIPT = Path(__file__).resolve().parent / "install_perf_analyzer.sh"
# Where the bundled loader (runtime/, see the install script) looks for the libraries it does not carry.
SYSTEM_LIBRARY_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64")
# Stability is not perf_analyzer's to decide here: with a huge threshold the first three windows count,
# so every run measures the same fixed time, like the Python generator's windows.
WINDOWS = 3
STABILITY_PERCENTAGE = 1_000_000
# perf_analyzer fails a window in which no request completed; shorter windows than this only happen in the
# smoke tests, on a loaded machine where the server can stall for several hundred milliseconds.
MIN_WINDOW_MS = 1000


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer is missing, or a run failed (the message carries its output)."""


def install_directory() -> Path:
    cache = os.environ.get("MODELDEPLOY_CACHE") or str(Path.home() / ".cache" / "modeldeploy")
    return Path(cache) / "bin" / f"perf-analyzer-{VERSION}"


def command_prefix() -> list[str]:
    """The argv that starts perf_analyzer here: $PERF_ANALYZER, the cached install, or the one on PATH.

    The cached install may carry runtime/ (a newer glibc and libstdc++ than the system's); then the binary
    is started through that runtime's dynamic loader.
    """
    explicit = os.environ.get("PERF_ANALYZER")
    candidates = [Path(explicit)] if explicit else [install_directory() / "perf_analyzer"]
    on_path = shutil.which("perf_analyzer")
    if not explicit and on_path:
        candidates.append(Path(on_path))
    for binary in candidates:
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            continue
        runtime = binary.parent / "runtime"
        loader = runtime / "ld-linux-x86-64.so.2"
        if loader.exists():
            library_path = ":".join([str(runtime), *SYSTEM_LIBRARY_DIRS])
            return [str(loader), "--library-path", library_path, str(binary)]
        return [str(binary)]
    raise PerfAnalyzerError(
        f"perf_analyzer {VERSION} not found (looked at {', '.join(map(str, candidates))}); "
        f"install it with `bash {INSTALL_SCRIPT.relative_to(INSTALL_SCRIPT.parents[2])}` "
        "(needs the network; pip alone gets a placeholder on systems older than glibc 2.38)"
    )


def version(prefix: Sequence[str]) -> str:
    completed = subprocess.run([*prefix, "--version"], capture_output=True, text=True, timeout=60)
    if completed.returncode != 0:
        raise PerfAnalyzerError(f"perf_analyzer --version failed: {completed.stderr or completed.stdout}")
    return (completed.stdout or completed.stderr).strip()  # it prints its version on stderr


def write_input_data(texts: Sequence[str], input_name: str, path: Path) -> Path:
    """perf_analyzer's JSON data file: one step per text, sent in order and cycled, one string each.

    The shape excludes the batch dimension, which perf_analyzer adds for batching models (`-b 1`); for
    the tutorial's non-batching model the same [1] is the whole shape.
    """
    if not texts:
        raise ValueError("no texts to write")
    data = {"data": [{input_name: {"content": [text], "shape": [1]}} for text in texts]}
    path.write_text(json.dumps(data))
    return path


@dataclass(frozen=True)
class Target:
    """A Triton model perf_analyzer can drive: gRPC address, model, and its one string input."""

    grpc_url: str  # host:port
    model: str
    input_name: str


@dataclass
class Run:
    """One perf_analyzer run at one concurrency: its measured windows, as it reports them."""

    concurrency: int
    requests: int  # completed in the measured windows (client side)
    window_s: float  # the measured windows together
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    server: dict[str, float]  # per request, µs: queue, compute_input, compute_infer, compute_output, request
    inference_count: int  # Triton's counts over the windows: inferences (texts) and executions (batches)
    execution_count: int
    client_cpu_s: float  # user + system CPU of the perf_analyzer process, its whole run
    client_wall_s: float
    client_requests: int  # every request it sent, warm-up included

    @property
    def average_batch(self) -> float:
        return self.inference_count / self.execution_count if self.execution_count else float("nan")

    @property
    def client_cores(self) -> float:
        return self.client_cpu_s / self.client_wall_s if self.client_wall_s > 0 else float("nan")

    @property
    def client_cpu_us_per_request(self) -> float:
        return 1e6 * self.client_cpu_s / self.client_requests if self.client_requests else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "window_s": round(self.window_s, 3),
            "throughput_rps": round(self.throughput_rps, 2),
            "p50_ms": round(self.p50_ms, 3),
            "p90_ms": round(self.p90_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "mean_ms": round(self.mean_ms, 3),
            "server_us": {key: round(value, 1) for key, value in self.server.items()},
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "client_cpu_s": round(self.client_cpu_s, 3),
            "client_wall_s": round(self.client_wall_s, 3),
            "client_cores": round(self.client_cores, 3),
            "client_cpu_us_per_request": round(self.client_cpu_us_per_request, 1),
        }


_COUNT = re.compile(r"^\s*(Request count|Inference count|Execution count):\s*(\d+)", re.MULTILINE)
_REQUEST_LATENCY = re.compile(r"Avg request latency:\s*(\d+)\s*usec")


def parse_output(stdout: str, csv_text: str) -> dict[str, Any]:
    """The figures of a single-concurrency run, from its CSV (`--verbose-csv`) and its printed summary.

    The CSV's latencies and server times are µs; the server's are Triton's statistics over the measured
    windows, averaged per request. Request/inference/execution counts are only printed, not in the CSV.
    """
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    if len(rows) != 1:
        raise PerfAnalyzerError(f"expected one CSV row (one concurrency), got {len(rows)}:\n{csv_text}")
    row = rows[0]

    def column(name: str) -> float:
        try:
            return float(row[name])
        except (KeyError, ValueError) as exc:
            raise PerfAnalyzerError(f"perf_analyzer CSV lacks {name!r}: {row}") from exc

    counts: dict[str, int] = {}
    for match in _COUNT.finditer(stdout):
        counts.setdefault(match.group(1), int(match.group(2)))  # the first is the client's request count
    missing = {"Request count", "Inference count", "Execution count"} - counts.keys()
    if missing:
        raise PerfAnalyzerError(f"perf_analyzer printed no {sorted(missing)}:\n{stdout[-3000:]}")
    request_latency = _REQUEST_LATENCY.search(stdout)
    return {
        "concurrency": int(column("Concurrency")),
        "throughput_rps": column("Inferences/Second"),
        "p50_ms": column("p50 latency") / 1000,
        "p90_ms": column("p90 latency") / 1000,
        "p99_ms": column("p99 latency") / 1000,
        "mean_ms": column("Avg latency") / 1000,
        "server": {
            "queue": column("Server Queue"),
            "compute_input": column("Server Compute Input"),
            "compute_infer": column("Server Compute Infer"),
            "compute_output": column("Server Compute Output"),
            "request": float(request_latency.group(1)) if request_latency else float("nan"),
        },
        "requests": counts["Request count"],
        "inference_count": counts["Inference count"],
        "execution_count": counts["Execution count"],
    }


@dataclass(frozen=True)
class Load:
    """What a perf_analyzer run sends: a closed loop of `concurrency` synchronous clients, one text of
    `data_file` per request, over gRPC, for `window_s` split into WINDOWS measurement windows (each at
    least MIN_WINDOW_MS); `warmup_requests` go first, unmeasured."""

    target: Target
    data_file: Path
    concurrency: int
    window_s: float
    warmup_requests: int
    # A decoupled model's responses over a gRPC stream; a request completes with its final response.
    streaming: bool = False


def measure_command(prefix: Sequence[str], load: Load, csv_path: Path) -> list[str]:
    """The perf_analyzer command line that runs `load` and writes its figures to `csv_path`."""
    target = load.target
    return [
        *prefix,
        "-m", target.model,
        "-u", target.grpc_url,
        "-i", "grpc",
        "-b", "1",
        "--input-data", str(load.data_file),
        "--concurrency-range", str(load.concurrency),
        "--measurement-mode", "time_windows",
        "--measurement-interval", str(max(MIN_WINDOW_MS, round(1000 * load.window_s / WINDOWS))),
        "--stability-percentage", str(STABILITY_PERCENTAGE),
        "--max-trials", str(WINDOWS),
        "--warmup-request-count", str(load.warmup_requests),
        "-f", str(csv_path),
        "--verbose-csv",
        *(["--streaming"] if load.streaming else []),
    ]  # fmt: skip


class Process:
    """A started perf_analyzer run; `finish()` waits for it and returns its parsed figures."""

    def __init__(self, command: Sequence[str], csv_path: Path, concurrency: int, warmup_requests: int):
        self.command = list(command)
        self.csv_path = csv_path
        self.concurrency = concurrency
        self.warmup_requests = warmup_requests
        self.log_path = csv_path.with_suffix(".log")
        self.started = time.monotonic()
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)

    def finish(self, timeout_s: float) -> Run:
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            raise PerfAnalyzerError(f"perf_analyzer ran past {timeout_s:.0f}s: {' '.join(self.command)}")
        wall_s = time.monotonic() - self.started
        # The child has been reaped by poll(); its CPU time is in the process's children's rusage, which
        # the caller samples around the run (see measure), so here only the output is read.
        stdout = self.log_path.read_text(errors="replace")
        if self.process.returncode != 0 or not self.csv_path.exists():
            raise PerfAnalyzerError(f"perf_analyzer exited with {self.process.returncode}:\n{stdout[-3000:]}")
        parsed = parse_output(stdout, self.csv_path.read_text())
        return Run(
            concurrency=parsed["concurrency"],
            requests=parsed["requests"],
            window_s=parsed["requests"] / parsed["throughput_rps"] if parsed["throughput_rps"] else 0.0,
            throughput_rps=parsed["throughput_rps"],
            p50_ms=parsed["p50_ms"],
            p90_ms=parsed["p90_ms"],
            p99_ms=parsed["p99_ms"],
            mean_ms=parsed["mean_ms"],
            server=parsed["server"],
            inference_count=parsed["inference_count"],
            execution_count=parsed["execution_count"],
            client_cpu_s=0.0,
            client_wall_s=wall_s,
            client_requests=parsed["requests"] + self.warmup_requests,
        )


def _children_cpu_s() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def measure(prefix: Sequence[str], load: Load, workdir: Path, clients: int = 1) -> list[Run]:
    """Run `clients` perf_analyzer processes at once, each running `load`, and return each one's figures.

    One client is the measurement; two at half the concurrency each show whether the client was the
    bottleneck (if it was, two add throughput). Each run's client CPU is the CPU its process used;
    with several at once only their total is known, so it is split in proportion to their requests.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    before = _children_cpu_s()
    processes = []
    for index in range(clients):
        csv_path = workdir / f"perf-c{load.concurrency}-{index}-{time.monotonic_ns()}.csv"
        command = measure_command(prefix, load, csv_path)
        processes.append(Process(command, csv_path, load.concurrency, load.warmup_requests))
    # Generous: warm-up at a slow server, start-up, and windows that end only when a request completes.
    timeout_s = 120 + 6 * load.window_s
    runs = [process.finish(timeout_s) for process in processes]
    cpu_s = _children_cpu_s() - before
    total = sum(run.client_requests for run in runs) or 1
    for run in runs:
        run.client_cpu_s = cpu_s * run.client_requests / total
    return runs
