"""N small encoders (N = 1, 4, 8) packed into one tritonserver (explicit model control, model_repo.model_set)
with the shared runtime (one host model runs every encoder; a forwarder stub per model, no torch in it)
and with a Python stub per model, vs N tritonservers of one model each, side by side in one run on this
machine:

- resident memory of everything each layout runs: every tritonserver and every Python-backend stub,
  as RSS (what `ps` shows; libraries shared between processes counted in each) and PSS (shared pages
  split between the processes that map them: the fair sum);
- throughput of mixed traffic (each of 64 closed-loop clients sends to the N models in turn) over gRPC.

    .venv/bin/python -m bench.packing [--sizes 1 4 8] [--duration 15] [--out bench/results/packing.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common.checkpoints import make_tiny_bert_classifier
from bench.common.loadgen import TritonGrpcSender, closed_loop
from bench.common.machine import _descendants, cpu_ticks_by_role, describe_machine, load_average
from bench.common.sentences import load_texts
from model_repo.build import build_repository
from model_repo.model_set import SharedRuntime, TritonRepositoryClient, reconcile
from model_repo.options import BuildOptions
from model_repo.output_dir import read_record
from model_repo.triton import TritonServer
from model_repo.triton_args import repository_server_args

CLIENTS = 64


def _memory_kib(pids: set[int]) -> dict[str, int]:
    """Summed RSS and PSS (KiB) of `pids` (smaps_rollup)."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return {"rss_kib": rss, "pss_kib": pss, "processes": len(pids)}


def _cpu_seconds_by_role(pids: set[int]) -> dict[str, float]:
    """CPU seconds (user + system) each role's processes have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    return {role: ticks / tick for role, ticks in cpu_ticks_by_role(pids).items()}


def _server_pids(servers: list[TritonServer]) -> set[int]:
    pids: set[int] = set()
    for server in servers:
        assert server.process is not None
        pids |= _descendants(server.process.pid)
    return pids


def build_models(root: Path, count: int) -> list[Path]:
    """`count` repositories of distinct small encoders (same architecture, distinct names and digests)."""
    checkpoint = make_tiny_bert_classifier(root / "checkpoint", hidden_size=256, layers=4).path
    return [
        build_repository(
            BuildOptions(source=f"file://{checkpoint}", model_name=f"encoder{i}", max_batch_size=16),
            root / f"repo-{i}",
        ).path
        for i in range(count)
    ]


@contextlib.contextmanager
def packed(repositories: list[Path], root: Path, shared: bool) -> Iterator[list[tuple[TritonServer, str]]]:
    served = root / f"served-{len(repositories)}-{'shared' if shared else 'stubs'}"
    served.mkdir(exist_ok=True)
    runtime = SharedRuntime(served.with_name(served.name + ".shared")) if shared else None
    args = ["--model-control-mode=explicit", f"--model-repository={served}", *repository_server_args()]
    with TritonServer(None, extra_args=args, ready_timeout_s=600) as server:
        desired = {f"encoder{i}": path for i, path in enumerate(repositories)}
        report = reconcile(served, desired, TritonRepositoryClient(server.http_url), shared_runtime=runtime)
        if report.failed:
            raise RuntimeError(f"load failed: {report.failed}")
        yield [(server, name) for name in desired]


@contextlib.contextmanager
def separate(repositories: list[Path]) -> Iterator[list[tuple[TritonServer, str]]]:
    with contextlib.ExitStack() as stack:
        servers = []
        for i, path in enumerate(repositories):
            args = ["--strict-readiness=true", f"--model-repository={path}", *repository_server_args()]
            servers.append(
                (stack.enter_context(TritonServer(None, extra_args=args, ready_timeout_s=600)), f"encoder{i}")
            )
        yield servers


LAYOUTS = ("shared", "packed", "separate")


def layout_servers(
    layout: str, repositories: list[Path], root: Path
) -> contextlib.AbstractContextManager[list[tuple[TritonServer, str]]]:
    """`shared`: one server, the shared runtime; `packed`: one server, a stub per model; `separate`: a
    server per model."""
    if layout == "separate":
        return separate(repositories)
    return packed(repositories, root, shared=layout == "shared")


async def mixed_traffic(targets: list[tuple[TritonServer, str]], duration_s: float) -> dict[str, Any]:
    senders = [TritonGrpcSender(server.grpc_url, name) for server, name in targets]
    turn = itertools.cycle(senders)

    async def send(text: str) -> None:
        await next(turn)(text)

    try:
        result = await closed_loop(send, load_texts(), CLIENTS, duration_s, warmup_s=3.0)
    finally:
        for sender in senders:
            await sender.close()
    return result.summary()


def measure(layout: str, targets: list[tuple[TritonServer, str]], duration_s: float) -> dict[str, Any]:
    servers = list({id(server): server for server, _ in targets}.values())
    time.sleep(2)  # let loads and warm-ups settle
    pids = _server_pids(servers)
    idle = _memory_kib(pids)
    cpu_before, client_before, began = _cpu_seconds_by_role(pids), time.process_time(), time.monotonic()
    traffic = asyncio.run(mixed_traffic(targets, duration_s))
    elapsed = time.monotonic() - began
    cpu_after = _cpu_seconds_by_role(pids)
    # Cores each role kept busy while the traffic ran (warm-up included): on a machine with few cores,
    # every core-second a layout spends outside the model is taken from it.
    busy = {role: round((cpu_after[role] - cpu_before.get(role, 0.0)) / elapsed, 3) for role in cpu_after}
    busy["client (this process)"] = round((time.process_time() - client_before) / elapsed, 3)
    loaded = _memory_kib(_server_pids(servers))
    return {
        "layout": layout,
        "models": len(targets),
        "servers": len(servers),
        "memory_idle": idle,
        "memory_after_traffic": loaded,
        "traffic": traffic,
        "cores_busy_by_role": busy,
        "load_average": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/packing.json"))
    parser.add_argument(
        "--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS), help="which layouts to run, in order"
    )
    args = parser.parse_args()
    machine = describe_machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp:
        root = Path(tmp)
        repositories = build_models(root, max(args.sizes))
        weights = (read_record(repositories[0]) or {}).get("memory", {}).get("weights_bytes")
        for size in args.sizes:
            chosen = repositories[:size]
            for layout in args.layouts:
                with layout_servers(layout, chosen, root) as targets:
                    rows.append(measure(layout, targets, args.duration))
                print(json.dumps(rows[-1]), flush=True)
    result = {"machine": machine, "clients": CLIENTS, "weights_bytes_per_model": weights, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))


def summary(result: dict[str, Any]) -> str:
    lines = [
        "| N | layout | processes | RSS MiB | PSS MiB | req/s (64 clients, mixed) | errors | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        memory = row["memory_after_traffic"]
        traffic = row["traffic"]
        lines.append(
            f"| {row['models']} | {row['layout']} | {memory['processes']} | {memory['rss_kib'] / 1024:.0f} | "
            f"{memory['pss_kib'] / 1024:.0f} | {traffic['throughput_rps']:.1f} | {traffic['errors']} | "
            f"{row['load_average'][0]:.1f} |"
        )
    lines.append("")
    weights = (result.get("weights_bytes_per_model") or 0) / 2**20
    for layout in LAYOUTS:
        rows = sorted((r for r in result["rows"] if r["layout"] == layout), key=lambda r: r["models"])
        if len(rows) >= 2 and rows[-1]["models"] > rows[0]["models"]:
            added = rows[-1]["models"] - rows[0]["models"]
            per_model = {
                kind: (rows[-1]["memory_after_traffic"][kind] - rows[0]["memory_after_traffic"][kind])
                / added
                / 1024
                for kind in ("pss_kib", "rss_kib")
            }
            lines.append(
                f"{layout}: each model added costs {per_model['pss_kib']:.0f} MiB PSS "
                f"({per_model['rss_kib']:.0f} MiB RSS); its weights are {weights:.1f} MiB"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
