"""`modeldeploy render` output for representative examples, compared with reviewed golden YAML.

The golden files change only on purpose: run with UPDATE_GOLDEN=1 to rewrite them, then review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from modeldeploy.cli import app

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = [
    "minilm-embeddings",
    "sentiment-hpa",
    "bge-cached",
    "chat-keda-scale-to-zero",
    "embeddings-locked-down",
]
RENDER_ARGS = ["--triton-image", "triton:golden", "--builder-image", "builder:golden", "-n", "models"]


def render(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["render", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("example", EXAMPLES)
def test_render_matches_the_golden_yaml(example: str) -> None:
    code, out, err = render("-f", str(REPO / "examples" / f"{example}.yaml"), *RENDER_ARGS)
    assert code == 0, err
    golden = GOLDEN / f"{example}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(out)
    assert golden.exists(), f"no golden file {golden}; run with UPDATE_GOLDEN=1 and review it"
    assert out == golden.read_text(), (
        f"render of {example} changed; if on purpose, rerun with UPDATE_GOLDEN=1"
    )
    for manifest in yaml.safe_load_all(out):
        if manifest["kind"] not in {"ScaledObject", "ServiceMonitor"}:
            kubernetes_validate.validate(manifest, "1.37.0", strict=True)


def test_every_example_renders() -> None:
    for path in sorted((REPO / "examples").glob("*.yaml")):
        code, out, err = render("-f", str(path))
        assert code == 0, f"{path.name}: {err}"
        kinds = [doc["kind"] for doc in yaml.safe_load_all(out)]
        assert "Deployment" in kinds and "Service" in kinds


def test_render_reads_stdin_and_reports_invalid_specs_by_field(tmp_path: Path) -> None:
    bad = {
        "apiVersion": "modeldeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "bad"},
        "spec": {"model": {"source": "ftp://x/y"}, "resources": {"gpuProduct": "NVIDIA-A10"}},
    }
    result = CliRunner().invoke(app, ["render", "-f", "-"], input=yaml.safe_dump(bad))
    assert result.exit_code == 1
    assert "spec.model.source must start with one of" in result.stderr
    assert "spec.resources.gpuProduct needs spec.resources.gpus >= 1" in result.stderr


def test_render_of_a_file_without_model_deployments_fails(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    code, _, err = render("-f", str(path))
    assert code == 1 and "holds no ModelDeployment" in err
