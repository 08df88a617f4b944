"""bench/openai/auth_flood: what a flood of requests with wrong API keys costs the requests with the right
one (issue: "a flood of bad keys does not slow good requests by more than 10%").

One tritonserver (HTTP and gRPC on loopback, as in a pod with spec.api.auth) and one sidecar with API
keys; the real all-MiniLM-L6-v2. Good traffic: `--clients` closed-loop clients sending
`POST /v1/embeddings` (one text, a valid key) for `--window-s`. Three conditions, alternating in every
round (A B C, then C B A, ...) so drifting load on a shared machine hits them alike:

- quiet: the good traffic alone;
- bad keys: plus a second process flooding `POST /v1/embeddings` with a wrong key at `--rate` requests/s
  (open loop over keep-alive connections: every one is answered 401);
- health: plus the same flood to `GET /health/live` (no key, the cheapest route), which separates what
  any extra HTTP request costs the sidecar's event loop from what checking a key costs.

Reported: the good traffic's throughput and p50 per condition, and the ratios bad-keys / quiet (the
issue's criterion: >= 0.90) and bad-keys / health (the key check's own cost: ~1.0). The flood process,
the load generator, the sidecar and tritonserver share this machine's CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common.checkpoints import minilm
from bench.common.loadgen import PooledHttpSender, closed_loop
from bench.common.machine import ForeignCpu, describe_machine, machine_line
from bench.common.report import RESULTS_DIR, fmt, markdown_table, update_readme_section, write_json
from bench.common.sentences import load_texts

GOOD_KEY, BAD_KEY = "sk-bench-good-0123456789abcdef", "sk-bench-wrong-0123456789abcdef"
QUIET, BAD_KEYS, HEALTH = "quiet", "bad keys", "health flood"
CONDITIONS = (QUIET, BAD_KEYS, HEALTH)
FLOOD_CONNECTIONS = 8


class KeyedEmbeddings(PooledHttpSender):
    def __init__(self, base_url: str, model: str, key: str) -> None:
        super().__init__(connections=64)
        self.url, self.model, self.key = base_url + "/embeddings", model, key
        self.answered = 0  # warm-up included (the sidecar's CPU is counted over it too)

    async def __call__(self, text: str) -> None:
        body = {"model": self.model, "input": text, "encoding_format": "base64"}
        headers = {"Authorization": f"Bearer {self.key}"}
        async with self.session().post(self.url, json=body, headers=headers) as response:
            payload = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
        self.answered += 1


# -- the flood (its own process: `python -m bench.openai.auth_flood --flood ...`) ------------------------


def _flood_request(host: str, port: int, target: str) -> bytes:
    if target == "health":
        return f"GET /health/live HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    body = json.dumps({"model": "minilm", "input": "flood", "encoding_format": "base64"}).encode()
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {BAD_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def flood(host: str, port: int, target: str, rate: float, seconds: float) -> dict[str, Any]:
    """`rate` requests/s for `seconds`, spread over keep-alive connections, on a fixed schedule."""
    request = _flood_request(host, port, target)
    expected = 200 if target == "health" else 401
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent, wrong, late = 0, 0, 0
    interval = FLOOD_CONNECTIONS / rate

    async def connection(offset: float) -> None:
        nonlocal sent, wrong, late
        reader, writer = await asyncio.open_connection(host, port)
        due = start + offset
        try:
            while due < start + seconds:
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    late += 1
                writer.write(request)
                if await _read_response(reader) != expected:
                    wrong += 1
                sent += 1
                due += interval
        finally:
            writer.close()

    await asyncio.gather(*(connection(i * interval / FLOOD_CONNECTIONS) for i in range(FLOOD_CONNECTIONS)))
    elapsed = loop.time() - start
    return {
        "sent": sent,
        "unexpected_status": wrong,
        "behind_schedule": late,
        "rate_rps": round(sent / elapsed, 1),
    }


@contextlib.contextmanager
def flooding(
    base_url: str, target: str | None, rate: float, seconds: float, log: Path
) -> Iterator[dict[str, Any]]:
    """The flood process running while the body runs; the dict holds its own report afterwards."""
    found: dict[str, Any] = {}
    if target is None:
        yield found
        return
    host, port = base_url.split("//", 1)[1].split("/", 1)[0].split(":")
    command = [sys.executable, "-m", "bench.openai.auth_flood", "--flood", target, "--host", host]
    command += ["--port", port, "--rate", str(rate), "--seconds", str(seconds)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)  # the flood is under way before the good traffic starts
        yield found
    finally:
        process.wait(timeout=seconds + 60)
        lines = log.read_text(errors="replace").strip().splitlines()
        try:
            found.update(json.loads(lines[-1]))
        except (IndexError, ValueError):
            found["error"] = "\n".join(lines[-20:]) or f"exit code {process.returncode}"


# -- the run ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.openai.auth_flood", description=__doc__)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=float, default=200.0, help="bad-key requests per second")
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/modeldeploy-bench-auth"))
    parser.add_argument("--name", default="openai-auth-flood-cpu")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results or READMEs")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    # The flood process's own options.
    parser.add_argument("--flood", choices=("bad-key", "health"), help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def serving(workdir: Path) -> Iterator[tuple[str, int]]:
    from model_repo.build import build_repository
    from model_repo.openai_local import LocalFrontend, write_api_keys
    from model_repo.options import BuildOptions
    from model_repo.triton import TritonServer, free_port
    from model_repo.triton_args import loopback_server_args, repository_server_args

    model = minilm()
    built = build_repository(
        BuildOptions(source=f"file://{model.path}", model_name="minilm"), workdir / "repository", force=True
    )
    keys = write_api_keys(workdir / "api-keys", [GOOD_KEY])
    args = ["--strict-readiness=true", *loopback_server_args(), *repository_server_args()]
    with (
        TritonServer(
            built.path, extra_args=args, ready_timeout_s=600, log_path=workdir / "triton.log"
        ) as server,
        LocalFrontend(
            built.path, server.grpc_url, free_port(), log_path=workdir / "openai.log", api_keys_dir=keys
        ) as frontend,
    ):
        assert frontend.process is not None
        yield frontend.base_url, frontend.process.pid


def measure_condition(
    base_url: str, sidecar: int, condition: str, args: argparse.Namespace, texts: list[str]
) -> dict[str, Any]:
    target = {QUIET: None, BAD_KEYS: "bad-key", HEALTH: "health"}[condition]
    seconds = args.warmup_s + args.window_s + 1.0
    foreign = ForeignCpu()

    sender = KeyedEmbeddings(base_url, "minilm", GOOD_KEY)

    async def good() -> Any:
        try:
            return await closed_loop(sender, texts, args.clients, args.window_s, args.warmup_s)
        finally:
            await sender.close()

    cpu_before = process_cpu_s(sidecar)
    with flooding(base_url, target, args.rate, seconds, args.workdir / "flood.log") as flood_report:
        foreign.start()
        result = asyncio.run(good())
        _, share = foreign.stop()
    summary: dict[str, Any] = result.summary()
    summary["other_cpu_share"] = round(share, 3)
    # The sidecar's own CPU over the whole condition (warm-up, window and the flood's tail): unlike
    # latency, barely moved by other work on the machine.
    summary["sidecar_cpu_s"] = round(process_cpu_s(sidecar) - cpu_before, 3)
    summary["sent_total"] = sender.answered
    if target is not None:
        summary["flood"] = flood_report
    return summary


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.flood:
        print(json.dumps(asyncio.run(flood(args.host, args.port, args.flood, args.rate, args.seconds))))
        return {}
    args.workdir.mkdir(parents=True, exist_ok=True)
    texts = list(load_texts())
    runs: dict[str, list[dict[str, Any]]] = {condition: [] for condition in CONDITIONS}
    with serving(args.workdir) as (base_url, sidecar):
        for round_index in range(args.rounds):
            order = CONDITIONS if round_index % 2 == 0 else tuple(reversed(CONDITIONS))
            for condition in order:
                summary = measure_condition(base_url, sidecar, condition, args, texts)
                print(f"round {round_index} {condition:<12} {json.dumps(summary)}", flush=True)
                runs[condition].append(summary)
    combined = {condition: _combine(found) for condition, found in runs.items()}
    quiet, bad, health = (combined[c] for c in CONDITIONS)
    report: dict[str, Any] = {
        "command": " ".join(["python -m bench.openai.auth_flood", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if v is not None
        },
        "machine": describe_machine(),
        "conditions": combined,
        "ratios": {
            "throughput bad-keys/quiet": _ratio(bad["throughput_rps"], quiet["throughput_rps"]),
            "p50 quiet/bad-keys": _ratio(quiet["p50_ms"], bad["p50_ms"]),
            "throughput bad-keys/health": _ratio(bad["throughput_rps"], health["throughput_rps"]),
        },
        "sidecar_cpu_us_per_request": _cpu_per_request(combined),
    }
    markdown = render_markdown(report, args)
    print(markdown)
    if not args.no_write:
        write_json(args.out / f"{args.name}.json", report)
        (args.out / f"{args.name}.md").write_text(markdown + "\n")
        update_readme_section(args.name, markdown)
    return report


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator else 0.0


def _cpu_per_request(combined: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The sidecar's CPU µs per request: a good one (quiet condition), and what each flood request added
    over the quiet condition's CPU for the same good requests (a 401, a health check)."""
    quiet = combined[QUIET]
    per_good = quiet["sidecar_cpu_s"] / max(1, _all_requests(quiet))
    found = {"good request": round(per_good * 1e6, 1)}
    for condition, label in ((BAD_KEYS, "wrong-key request (401)"), (HEALTH, "health check")):
        runs = combined[condition]
        sent = sum(run.get("flood", {}).get("sent", 0) for run in runs["runs"])
        extra = runs["sidecar_cpu_s"] - per_good * _all_requests(runs)
        found[label] = round(extra / max(1, sent) * 1e6, 1)
    return found


def _all_requests(combined: dict[str, Any]) -> int:
    """Good requests sent over the whole condition, warm-up included (the CPU is counted over it)."""
    return int(sum(run["sent_total"] for run in combined["runs"]))


def _combine(found: list[dict[str, Any]]) -> dict[str, Any]:
    window = sum(run["window_s"] for run in found)
    return {
        "requests": sum(run["requests"] for run in found),
        "errors": sum(run["errors"] for run in found),
        "throughput_rps": round(sum(run["requests"] for run in found) / window, 2),
        "p50_ms": round(float(np.median([run["p50_ms"] for run in found])), 3),
        "p99_ms": round(float(np.median([run["p99_ms"] for run in found])), 3),
        "other_cpu_share": round(float(np.mean([run["other_cpu_share"] for run in found])), 3),
        "sidecar_cpu_s": round(sum(run["sidecar_cpu_s"] for run in found), 3),
        "runs": found,
    }


def render_markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [
        [
            condition,
            fmt(found["throughput_rps"]),
            fmt(found["p50_ms"]),
            fmt(found["p99_ms"]),
            str(found["errors"]),
            f"{found['other_cpu_share']:.0%}",
        ]
        for condition, found in report["conditions"].items()
    ]
    table = markdown_table(
        ["condition", "good req/s", "good p50 ms", "good p99 ms", "errors", "other CPU"], rows
    )
    ratios = ", ".join(f"{name} **{value:.3f}**" for name, value in report["ratios"].items())
    cpu = ", ".join(f"{name} {value:,.0f} µs" for name, value in report["sidecar_cpu_us_per_request"].items())
    return (
        f"{machine_line(report['machine'])}\n\n"
        f"{args.clients} good clients (valid key, /v1/embeddings, all-MiniLM-L6-v2); floods of "
        f"{args.rate:.0f} requests/s; {args.rounds} rounds of {args.window_s:.0f} s per condition, "
        "alternating.\n\n"
        f"{table}\n\nRatios: {ratios}.\n\nThe sidecar's CPU per request: {cpu}.\n\n"
        f"Command: `{report['command']}`"
    )


if __name__ == "__main__":
    run()
