"""ruff and mypy --strict are part of the test suite, so CI fails on a lint or type error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PYTHON_TREES = ["operator", "dev", "model_repo", "tests", "bench", "scripts"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_check() -> None:
    result = _run(str(BIN / "ruff"), "check", *PYTHON_TREES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = _run(str(BIN / "ruff"), "format", "--check", *PYTHON_TREES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = _run(
        str(BIN / "mypy"), "--strict", "operator/modeldeploy", "dev/modeldeploy_dev", "model_repo", "bench"
    )
    assert result.returncode == 0, result.stdout + result.stderr
