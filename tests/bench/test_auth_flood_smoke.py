"""bench/openai/auth_flood runs end to end (real tritonserver and sidecar with keys, the real flood
process) for a few seconds and reports every condition. Structure only, never speed: the figures are the
benchmark's own (bench/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_auth_flood_benchmark_reports_every_condition_and_its_flood(tmp_path: Path) -> None:
    from bench.openai.auth_flood import BAD_KEYS, CONDITIONS, HEALTH, run

    report = run(
        [
            "--rounds", "1", "--window-s", "2", "--warmup-s", "0.5", "--rate", "20", "--clients", "2",
            "--workdir", str(tmp_path / "work"), "--out", str(tmp_path), "--no-write",
        ]
    )  # fmt: skip
    assert list(report["conditions"]) == list(CONDITIONS)
    for condition in CONDITIONS:
        (found,) = report["conditions"][condition]["runs"]
        assert found["errors"] == 0, found
    for condition in (BAD_KEYS, HEALTH):
        (found,) = report["conditions"][condition]["runs"]
        # The flood ran and every answer was the expected one (401 for wrong keys, 200 for health).
        assert found["flood"]["sent"] > 0 and found["flood"]["unexpected_status"] == 0, found["flood"]
    assert set(report["sidecar_cpu_us_per_request"]) == {
        "good request",
        "wrong-key request (401)",
        "health check",
    }
    assert set(report["ratios"]) == {
        "throughput bad-keys/quiet",
        "p50 quiet/bad-keys",
        "throughput bad-keys/health",
    }
