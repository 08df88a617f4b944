"""Build a Python environment for the benchmark on a GPU machine whose own environment has numpy 2.

Triton 2.51's Python-backend stub (nvidia-pytriton 0.7.0) is compiled against numpy 1 and misreads numpy
2 arrays: string inputs reach model.py as garbage ("unpack_from requires a buffer of at least 1313754706
bytes"). The machine's scipy and scikit-learn need numpy 2, and transformers imports scikit-learn when it
is present. So the new environment gets the staged wheels (numpy 1.26, tritonclient, FastAPI, ...) plus
links to every other package of the machine's environment, except numpy, scipy and scikit-learn.

usage: python3 bench/gpu/make_env.py WHEEL_DIR ENV_DIR   (prints the new interpreter's path)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

LEFT_OUT = {"numpy", "scipy", "scikit_learn", "sklearn"}


def project(entry: str) -> str:
    """The normalised project or top-level name of a site-packages entry."""
    name = re.sub(r"-[^-]*\.(dist|egg)-info$", "", entry)
    name = name.removesuffix(".libs")
    return re.sub(r"[-.]+", "_", name).lower()


def main() -> None:
    wheels, env = Path(sys.argv[1]), Path(sys.argv[2])
    shutil.rmtree(env, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    target = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
         "--no-cache-dir", "--target", str(target), *map(str, sorted(wheels.glob("*.whl")))],
        check=True,
    )  # fmt: skip
    installed = {project(entry.name) for entry in target.iterdir()}
    source = Path(sysconfig.get_paths()["purelib"])
    for entry in sorted(source.iterdir()):
        name = project(entry.name)
        if name in LEFT_OUT or name in installed or (target / entry.name).exists():
            continue
        (target / entry.name).symlink_to(entry)
    print(python)


if __name__ == "__main__":
    main()
