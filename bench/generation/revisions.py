"""bench/generation/revisions: ours with this checkout's runtime against ours with an earlier revision's, both
served at once and measured in alternating windows.

    .venv/bin/python -m bench.generation.revisions --base REV [--concurrency 16] [--max-tokens 512] ...

A change to the generation runtime is measured here against the runtime before it. Runs minutes apart
on a shared machine drift by several percent (bench/generation/paired.py), so the two servers stay up and
take turns: per round and per level one window of each, the order swapped every round, and each ratio is
taken within its round. Both repositories are built by this checkout's builder from the same
checkpoint; the base one then gets `REV`'s runtime files (`model_repo/runtime/*.py` as `git show` gives
them) in place of the current ones, so only the runtime differs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bench.common.machine import machine_line
from bench.common.report import fmt, markdown_table, spread, write_results
from bench.generation.run import (
    Settings,
    add_measurement_arguments,
    add_model_arguments,
    add_round_arguments,
    answer_tokens,
    build_ours,
    generation_fields,
    guarded_level,
    make_checkpoint,
    make_prompts,
    ours_level,
    parse_round_arguments,
    report_head,
    serve_ours,
)

CURRENT, BASE = "current", "base"
ROOT = Path(__file__).resolve().parents[2]
RUNTIME = "model_repo/runtime"


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, str, int]:
    parser = argparse.ArgumentParser(prog="python -m bench.generation.revisions", description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--base", required=True, help="the git revision whose runtime is the base")
    parser.add_argument(
        "--answer-tokens",
        dest="spread_answer_tokens",
        default="",
        metavar="FEWEST-MOST",
        help="answers spread evenly over this many tokens, one length per prompt, instead of every answer "
        "--max-tokens long: clients stop finishing together, so a window sees a steady mix of short and "
        "long contexts rather than one phase of a lockstep cycle",
    )
    add_measurement_arguments(
        parser,
        concurrency="16",
        warmup_s=5.0,
        window_s=15.0,
        workdir="/tmp/modeldeploy-bench-generation-revisions",
        name="generation-revisions-cpu",
    )
    add_round_arguments(parser, rounds=3)
    args = parse_round_arguments(parser, argv)
    return Settings(**generation_fields(args)), args.base, args.rounds


def runtime_files_at(revision: str) -> dict[str, bytes]:
    """The runtime's modules at `revision`, by file name."""
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{revision}:{RUNTIME}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return {
        name: subprocess.run(
            ["git", "show", f"{revision}:{RUNTIME}/{name}"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        for name in listing
        if name.endswith(".py")
    }


def with_runtime_of(repository: Path, revision: str, destination: Path) -> Path:
    """A copy of `repository` whose Python models run `revision`'s runtime: the runtime modules the build
    copied are removed and every module of that revision's runtime is written in their place (one the
    model does not import is never loaded)."""
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(repository, destination)
    files = runtime_files_at(revision)
    current = {path.name for path in (ROOT / RUNTIME).glob("*.py")}
    for model_py in destination.glob("*/[0-9]*/model.py"):
        for path in model_py.parent.glob("*.py"):
            if path.name in current:
                path.unlink()
        for name, text in files.items():
            (model_py.parent / name).write_bytes(text)
    return destination


def round_order(round_index: int) -> list[str]:
    return [CURRENT, BASE] if round_index % 2 == 0 else [BASE, CURRENT]


def measure(
    checkpoint: Path, settings: Settings, base: str, rounds: int, prompts: Sequence[str]
) -> list[dict[str, Any]]:
    lengths = answer_tokens(settings, prompts)
    current_repository = build_ours(checkpoint, settings)
    base_repository = with_runtime_of(current_repository, base, settings.workdir / "base-repository")
    measured: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        servers = {
            CURRENT: stack.enter_context(serve_ours(current_repository, settings)),
            BASE: stack.enter_context(serve_ours(base_repository, _with_log(settings, "base"))),
        }
        for index in range(rounds):
            for clients in settings.concurrency:
                windows = {
                    name: guarded_level(
                        settings,
                        partial(ours_level, servers[name], settings, clients, prompts, True, lengths),
                        f"{name} at {clients}, round {index + 1}",
                    )
                    for name in round_order(index)
                }
                entry = {
                    "round": index + 1,
                    "clients": clients,
                    "order": round_order(index),
                    "windows": windows,
                    "current/base tokens/s": _ratio(windows, "tokens_per_s"),
                    "current/base TTFT p50": _ratio(windows, "ttft_p50_ms"),
                }
                print(
                    f"round {index + 1}, {clients} clients: tokens/s {entry['current/base tokens/s']:.3f}, "
                    f"TTFT p50 {entry['current/base TTFT p50']:.3f} (current/base)",
                    flush=True,
                )
                measured.append(entry)
    return measured


def _with_log(settings: Settings, name: str) -> Settings:
    """`settings` with its own workdir for the base server (serve_ours logs to the workdir)."""
    import dataclasses

    workdir = settings.workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(settings, workdir=workdir)


def _ratio(windows: dict[str, dict[str, Any]], key: str) -> float:
    below = windows[BASE][key]
    return float(windows[CURRENT][key] / below) if below else float("nan")


def summarise(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per level, each ratio's median over the rounds with its lowest and highest."""
    summary = []
    for clients in sorted({entry["clients"] for entry in entries}):
        level: dict[str, Any] = {"clients": clients}
        for key in ("current/base tokens/s", "current/base TTFT p50"):
            values = [entry[key] for entry in entries if entry["clients"] == clients]
            level[key] = spread(values)
        summary.append(level)
    return summary


def render_markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"Ours with this checkout's runtime ({report['current_commit']}) against ours with "
        f"{report['base']}'s ({report['base_commit']}), both served at once, one window of each per round "
        f"and level ({settings['warmup_s']:g} s warm-up + {settings['window_s']:g} s), the order swapped "
        f"every round. Model: random-weight Llama, {settings['layers']} layers, hidden {settings['hidden']}, "
        f"GQA; prompts {settings['min_prompt']}-{settings['max_prompt']} tokens, {_answers(settings)} "
        "(no EOS), greedy, streamed.",
        "",
    ]
    headers = [
        "round",
        "clients",
        "current tok/s",
        "base tok/s",
        "current/base tok/s",
        "TTFT p50 ms current / base",
        "other processes' CPU, most in a window",
    ]
    rows = [
        [
            str(entry["round"]),
            str(entry["clients"]),
            fmt(entry["windows"][CURRENT]["tokens_per_s"]),
            fmt(entry["windows"][BASE]["tokens_per_s"]),
            f"{entry['current/base tokens/s']:.3f}x",
            f"{fmt(entry['windows'][CURRENT]['ttft_p50_ms'])} / {fmt(entry['windows'][BASE]['ttft_p50_ms'])}",
            f"{max(window['foreign_cpu_share'] for window in entry['windows'].values()):.0%}",
        ]
        for entry in report["rounds"]
    ]
    for level in report["summary"]:
        tokens = level["current/base tokens/s"]
        ttft = level["current/base TTFT p50"]
        rows.append(
            [
                "median (min-max)",
                str(level["clients"]),
                "",
                "",
                f"**{tokens['median']:.3f}x** ({tokens['min']:.3f}-{tokens['max']:.3f})",
                f"{ttft['median']:.3f}x ({ttft['min']:.3f}-{ttft['max']:.3f})",
                "",
            ]
        )
    lines.append(markdown_table(headers, rows))
    lines += ["", f"Machine: {machine_line(report['machine'])}. Command: `{report['command']}`."]
    return "\n".join(lines)


def _answers(settings: dict[str, Any]) -> str:
    lengths = settings.get("spread_answer_tokens")
    if lengths:
        return f"answers of {lengths[0]}-{lengths[1]} tokens (one length per prompt)"
    return f"{settings['max_tokens']}-token answers"


def _commit(revision: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    settings, base, rounds = parse_args(argv)
    settings.workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = make_checkpoint(settings, settings.workdir / "checkpoint")
    prompts = make_prompts(checkpoint, settings)
    report = report_head("bench.generation.revisions", argv, settings)
    report["base"] = base
    report["base_commit"] = _commit(base)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", RUNTIME], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    report["current_commit"] = _commit("HEAD") + (" with uncommitted changes" if dirty else "")
    report["rounds"] = measure(checkpoint, settings, base, rounds, prompts)
    report["summary"] = summarise(report["rounds"])
    markdown = render_markdown(report)
    print(markdown)
    if settings.write:
        write_results(settings.name, report, markdown, readme=False)
    print(json.dumps(report["summary"]))
    return report


if __name__ == "__main__":
    run()
