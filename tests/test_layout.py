"""The repository layout keeps Python's standard library importable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_operator_dir_is_not_a_package() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_stdlib_operator_module_is_not_shadowed() -> None:
    # With the repository root first on sys.path, `import operator` must still be the standard library's.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import operator; "
        "assert hasattr(operator, 'itemgetter'), operator.__file__; "
        "location = operator.__file__ or ''; "
        "assert 'site-packages' not in location and sys.argv[1] not in location; "
        "print(operator.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=False, cwd="/"
    )
    assert result.returncode == 0, result.stderr


def test_both_packages_import() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import modeldeploy, model_repo; print(modeldeploy.__version__)"],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.1.0"
