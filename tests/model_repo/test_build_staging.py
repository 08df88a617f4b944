"""A killed build's staging directory (`.<digest>.tmp-*` in the cache volume) does not stay forever: the
next build beside it removes it, while a running build's and anything not the builder's stay.

A real `modeldeploy build` process is SIGKILLed mid-build (what an evicted or OOM-killed build Job is)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from model_repo.build import RECORD_FILE, build_repository
from model_repo.options import BuildOptions
from model_repo.staging import MARK, staging_directory


def _staging(cache: Path) -> list[Path]:
    return sorted(path for path in cache.glob(".*.tmp-*") if (path / MARK).exists())


def test_a_killed_builds_staging_is_removed_by_the_next_build(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    modeldeploy = str(Path(sys.executable).parent / "modeldeploy")
    source = f"file://{checkpoints['text-generation']}"
    command = [modeldeploy, "build", "--source", source, "--out", str(cache / "a" / "aaaa")]
    killed = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _staging(cache / "a") and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert killed.poll() is None, "the build ended before it could be killed"
    finally:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
    (left,) = _staging(cache / "a")
    assert not (cache / "a" / "aaaa").exists()

    unmarked = cache / "a" / ".bbbb.tmp-not-ours"  # no mark: not provably the builder's
    unmarked.mkdir()
    with staging_directory(cache / "a" / "cccc") as running:  # a live build's, locked
        built = build_repository(
            BuildOptions(source=f"file://{checkpoints['feature-extraction']}"), cache / "a" / "dddd"
        )
        assert (built.path / RECORD_FILE).exists()
        assert not left.exists(), "the killed build's staging directory is still there"
        assert running.exists() and unmarked.exists()
    assert not running.exists()
    assert sorted(path.name for path in (cache / "a").iterdir()) == [".bbbb.tmp-not-ours", "dddd"]
