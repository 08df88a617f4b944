"""The control-plane benchmark runs end to end at a tiny size (N=3) and reports every number it claims.

This starts its own local control plane and operator (the benchmark's real code path, as
``python -m bench.controlplane`` runs it); it checks the mechanics and the report, not performance.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_controlplane_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench.controlplane",
            "--sizes", "3", "--resync-seconds", "5", "--timeout", "180",
            "--out", str(out), "--no-readme", "--keep-logs", str(tmp_path / "logs"),
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]

    report = json.loads((out / "controlplane.json").read_text())
    (result,) = report["results"]
    assert result["n"] == 3
    assert result["errors"] == []
    # Everything converged, in order: children and status before the last write of the convergence.
    for key in ("children_s", "status_s", "ready_s", "converged_s", "floor_s", "floor_ratio"):
        assert isinstance(result[key], float) and result[key] > 0, (key, result[key])
    assert result["ready_s"] >= result["status_s"] - 1
    # Every ModelDeployment needed writes (children at least), all seen in the audit log and replayed.
    assert result["operator_writes"] >= 3 * 2
    assert result["writes_per_md"] == pytest.approx(result["operator_writes"] / 3, abs=0.01)
    assert result["floor_writes"] >= result["operator_writes"] - sum(result["floor_not_replayed"].values())
    assert result["peak_rss_mb"] > 10 and result["cpu_s_total"] >= result["cpu_s_at_convergence"] > 0
    assert isinstance(result["steady_writes"], int)
    assert result["rss_samples"]

    markdown = (out / "controlplane.md").read_text()
    assert markdown.startswith("| N |") and "\n| 3 |" in markdown
    assert (out / "controlplane.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
