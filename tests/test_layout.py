"""The repository layout keeps Python's standard library importable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python_from_root_dir(*args: str) -> subprocess.CompletedProcess[str]:
    """This interpreter run from / (not the checkout), so that only what is installed imports."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False, cwd="/")


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
    result = _python_from_root_dir("-c", code, str(ROOT))
    assert result.returncode == 0, result.stderr


def test_both_packages_import() -> None:
    result = _python_from_root_dir("-c", "import modeldeploy, model_repo; print(modeldeploy.__version__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.1.0"


def test_the_wheel_carries_only_the_product(tmp_path: Path) -> None:
    """The wheel the images install holds the two product packages, and none of the development tooling
    (modeldeploy_dev: local control plane, demo), which only works from a checkout."""
    import zipfile

    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    result = subprocess.run(
        [*command, "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("modeldeploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names if not name.startswith("modeldeploy-")}
    assert packages == {"modeldeploy", "model_repo"}, packages
    assert "model_repo/runtime/model.py" in names and "modeldeploy/cli.py" in names
    # Every subpackage too (pyproject.toml's `packages` must name each one).
    for source in (ROOT / "operator" / "modeldeploy", ROOT / "model_repo"):
        for init in source.rglob("__init__.py"):
            assert init.relative_to(source.parent).as_posix() in names, f"{init.parent} is not in the wheel"
    assert not [name for name in names if "devcluster" in name or "demo" in name], names


def test_the_product_cli_has_no_development_commands() -> None:
    from typer.testing import CliRunner

    from modeldeploy.cli import app

    help_text = CliRunner().invoke(app, ["--help"]).output
    assert "operator" in help_text and "build" in help_text
    assert "demo" not in help_text and "dev-cluster" not in help_text


def test_the_product_folder_holds_only_the_product() -> None:
    """`operator/` is the product's control plane only; the development tooling sits beside its own
    distribution file (dev/pyproject.toml), and is imported from there (installed editable)."""
    assert sorted(path.name for path in (ROOT / "operator").iterdir()) == ["modeldeploy"]
    assert (ROOT / "dev" / "pyproject.toml").is_file() and (ROOT / "dev" / "modeldeploy_dev").is_dir()
    result = _python_from_root_dir("-c", "import modeldeploy_dev; print(modeldeploy_dev.__file__)")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == ROOT / "dev" / "modeldeploy_dev", result.stdout
