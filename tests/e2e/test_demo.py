"""`make demo`, the project's main job, end to end: the real control plane, the operator, the example
ModelDeployment, the pod's builder and Triton containers played here, real requests, and a teardown that
leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeldeploy_dev.demo import DOCUMENTS

pytestmark = [pytest.mark.cluster, pytest.mark.triton]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in line:
            found.append(line)
    return found


def test_the_demo_serves_the_example_and_leaves_nothing_running(
    cluster_bin_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "demo-cluster"
    env = {**os.environ, "COLUMNS": "200"}  # one line per table row, as in a wide terminal
    demo = subprocess.run(
        [str(Path(sys.executable).parent / "modeldeploy-dev"), "demo", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output[-4000:]
    assert "EMBEDDING of 384 floats" in output, output[-4000:]
    # The real all-MiniLM-L6-v2 ranks the Kubernetes document first for the Kubernetes question.
    ranked = [line for line in output.splitlines() if any(doc[:40] in line for doc in DOCUMENTS)]
    assert ranked and DOCUMENTS[0][:40] in ranked[0], "\n".join(ranked)
    assert "Demo finished" in output
    assert not _processes_mentioning(str(state)), "the demo left processes running"
