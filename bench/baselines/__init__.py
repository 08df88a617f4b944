"""The servers users would otherwise run, for the data-plane benchmark to compare against."""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.common.checkpoints import BenchModel

TUTORIAL_DIR = Path(__file__).resolve().parent / "hf_tutorial"
TUTORIAL_MODEL_NAME = "hf_pipeline"

_OUTPUTS = {
    "text-classification": (
        'output [\n  {\n    name: "label"\n    data_type: TYPE_STRING\n    dims: [ -1 ]\n  }\n]\n'
        'output [\n  {\n    name: "score"\n    data_type: TYPE_FP32\n    dims: [ -1 ]\n  }\n]\n'
    ),
    "feature-extraction": (
        'output [\n  {\n    name: "embedding"\n    data_type: TYPE_FP32\n    dims: [ -1 ]\n  }\n]\n'
    ),
}


def write_tutorial_repository(model: BenchModel, out: Path, device: str, dtype: str) -> Path:
    """A model repository holding baseline (a) for `model`, made the tutorial's way (template + copy)."""
    if model.task not in _OUTPUTS:
        raise ValueError(f"baseline (a) covers {sorted(_OUTPUTS)}, not {model.task}")
    version_dir = out / TUTORIAL_MODEL_NAME / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TUTORIAL_DIR / "model.py", version_dir / "model.py")
    config = (TUTORIAL_DIR / "config.pbtxt.template").read_text()
    for tag, value in {
        "MODEL_TAG": str(model.path),
        "TASK_TAG": model.task,
        "DEVICE_TAG": device,
        "DTYPE_TAG": dtype,
        "OUTPUTS_TAG": _OUTPUTS[model.task],
    }.items():
        config = config.replace(tag, value)
    (out / TUTORIAL_MODEL_NAME / "config.pbtxt").write_text(config)
    return out
