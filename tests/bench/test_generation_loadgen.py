"""bench/generation/loadgen without aiperf or servers: reading aiperf's summary file (a trimmed copy of one
that aiperf 0.13.0 wrote against the sidecar), our client's window, the command, the ratio and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench.generation.loadgen import (
    AIPERF,
    AIPERF_REQUEST_RATE,
    OURS,
    Answer,
    aiperf_command,
    combine,
    parse_aiperf_export,
    parse_args,
    ratio,
    render_markdown,
    summarize_answers,
    write_dataset,
)

EXPORT = Path(__file__).resolve().parent / "fixtures" / "aiperf-0.13-profile_export_aiperf.json"


def test_aiperf_summary_is_read_in_its_units() -> None:
    level = parse_aiperf_export(json.loads(EXPORT.read_text()))
    assert level == {
        "tokens_per_s": pytest.approx(565.469, abs=1e-3),
        "requests": 80,
        "errors": 0,
        "complete": True,
        "duration_s": pytest.approx(9.0489, abs=1e-4),
        "ttft_p50_ms": pytest.approx(379.084, abs=1e-3),
        "itl_p50_ms": pytest.approx(22.031, abs=1e-3),
        "latency_p50_ms": pytest.approx(1802.089, abs=1e-3),
        "osl_avg": 64.0,
    }
    # Its throughput is its output tokens over (within 0.1%: aiperf times the two apart) its duration.
    assert level["tokens_per_s"] == pytest.approx(80 * 64 / level["duration_s"], rel=1e-3)


def test_aiperf_failures_and_cancelled_runs_are_counted() -> None:
    export = json.loads(EXPORT.read_text())
    details = {"code": 500, "type": "InternalServerError", "message": "boom"}
    export["error_summary"] = [
        {"error_details": details, "count": 3},
        {"error_details": {**details, "code": 503}, "count": 2},
    ]
    export["was_cancelled"] = True
    del export["inter_token_latency"]
    level = parse_aiperf_export(export)
    assert (level["errors"], level["complete"]) == (5, False)
    assert math.isnan(level["itl_p50_ms"])


def test_our_window_counts_answers_completed_inside_it() -> None:
    answers = [
        Answer(started=0.0, first_text=0.5, finished=9.5, tokens=64),  # before the window
        Answer(started=8.0, first_text=8.2, finished=11.0, tokens=64),  # began in the warm-up: counted
        Answer(started=12.0, first_text=12.1, finished=18.4, tokens=64),
        Answer(started=25.0, first_text=25.3, finished=31.0, tokens=64),  # after the window
    ]
    summary = summarize_answers(answers, window_start=10.0, window_s=10.0)
    assert summary["requests"] == 2
    assert summary["tokens_per_s"] == pytest.approx(128 / 10.0)
    assert summary["ttft_p50_ms"] == pytest.approx((200 + 100) / 2)
    # (latency - TTFT) / (tokens - 1), as aiperf computes it.
    assert summary["itl_p50_ms"] == pytest.approx((2800 / 63 + 6300 / 63) / 2)


def test_the_command_gives_aiperf_our_prompts_and_exact_answer_lengths(tmp_path: Path) -> None:
    settings = parse_args(["--isl", "32", "--osl", "16", "--concurrency", "4,16", "--window-s", "12"])
    assert (settings.min_prompt, settings.max_prompt, settings.max_tokens) == (32, 32, 16)
    assert settings.concurrency == (4, 16)
    dataset = write_dataset(["one prompt", "another"], 16, tmp_path / "prompts.jsonl")
    assert [json.loads(line) for line in dataset.read_text().splitlines()] == [
        {"text": "one prompt", "output_length": 16},
        {"text": "another", "output_length": 16},
    ]
    command = aiperf_command(
        settings, "http://127.0.0.1:9000/v1", tmp_path / "llama", dataset, 16, tmp_path / "out"
    )
    assert command[:2] == [str(settings.aiperf_venv / "bin" / "aiperf"), "profile"]
    options = dict(arg.removeprefix("--").split("=", 1) for arg in command[2:] if "=" in arg)
    assert options["url"] == "http://127.0.0.1:9000"  # aiperf adds /v1/completions itself
    assert options["input-file"] == str(dataset)
    assert json.loads(options["extra-inputs"]) == {"min_tokens": 16, "temperature": 0}
    assert (options["concurrency"], options["benchmark-duration"]) == ("16", "12")
    assert {"--streaming", "--use-server-token-count"} <= set(command)
    # A request rate far above what the server completes, so the 16 clients bind: aiperf's closed loop
    # without one spins its timing manager on a core of the server's machine.
    assert float(options["request-rate"]) == AIPERF_REQUEST_RATE >= 50
    alone = aiperf_command(
        parse_args(["--aiperf-request-rate", "0"]), "http://h/v1", tmp_path, dataset, 16, tmp_path / "o"
    )
    assert not any(arg.startswith("--request-rate") for arg in alone)


def _run(tokens_per_s: float, ttft: float, cpu: float, **extra: Any) -> dict[str, Any]:
    return {
        "clients": 16,
        "tokens_per_s": tokens_per_s,
        "requests": 100,
        "errors": 0,
        "complete": True,
        "duration_s": 20.0,
        "ttft_p50_ms": ttft,
        "itl_p50_ms": 20.0,
        "latency_p50_ms": 1500.0,
        "client_cpu_s": cpu,
        "client_wall_s": 30.0,
        "other_cpu_share": 0.01,
        **extra,
    }


def test_rounds_combine_and_the_ratio_is_aiperf_over_ours() -> None:
    aiperf = combine([_run(500.0, 300.0, 30.0), _run(540.0, 340.0, 36.0, duration_s=22.0)])
    assert aiperf["tokens_per_s"] == pytest.approx((500 * 20 + 540 * 22) / 42, abs=0.05)
    assert aiperf["ttft_p50_ms"] == pytest.approx(320.0)
    assert aiperf["client_cores"] == pytest.approx(1.1)
    ours = combine([_run(500.0, 200.0, 1.5), _run(500.0, 220.0, 1.5)])
    level = {"clients": 16, AIPERF: aiperf, OURS: ours}
    assert ratio(level) == pytest.approx(aiperf["tokens_per_s"] / 500.0, abs=1e-3)
    assert math.isnan(ratio({**level, OURS: {**ours, "tokens_per_s": 0.0}}))


def test_report_marks_agreement_and_puts_client_cpu_beside_throughput() -> None:
    def report(aiperf_tokens: float, complete: bool = True) -> str:
        aiperf = combine([_run(aiperf_tokens, 300.0, 30.0, complete=complete)])
        ours = combine([_run(500.0, 200.0, 3.0)])
        level = {"clients": 16, AIPERF: aiperf, OURS: ours}
        level["ratio"] = ratio(level)
        settings = {"layers": 4, "hidden": 512, "max_prompt": 128, "max_tokens": 64}
        settings |= {"rounds": 1, "warmup_s": 6.0, "window_s": 20.0}
        machine = {"cpu": "cpu", "cores": 2, "memory_gib": 8, "gpus": [], "load_average_at_start": [0.1]}
        return render_markdown(
            {
                "command": "python -m bench.generation.loadgen",
                "settings": settings,
                "machine": machine,
                "aiperf_version": "0.13.0",
                "levels": [level],
            }
        )

    agreeing = report(540.0)
    row = next(line for line in agreeing.splitlines() if line.startswith("| 16 "))
    assert row.split(" | ")[1:5] == ["540.0", "500.0", "1.080", "yes"]
    assert "1.00 / 0.10" in row  # client cores: 30 and 3 CPU-seconds over 30 s each
    assert "2 cores" in agreeing and "INCOMPLETE" not in agreeing
    disagreeing = report(560.0, complete=False)
    assert "| 1.120 | NO |" in disagreeing
    assert "INCOMPLETE: aiperf reported a cancelled or incomplete run at 16" in disagreeing
