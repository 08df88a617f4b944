"""The builder's staging directories (`.<name>.tmp-*` beside --out): held by a live build, removed by the
next build once their build is gone.

A build holds an exclusive flock on its staging directory for as long as it runs, and marks the directory
as the builder's only once it holds the lock. A killed build (SIGKILL, an evicted pod) releases the lock
with its process, so a later build beside it, in the same cache volume or --out parent, removes what it
left: a marked directory whose lock anyone can take. A directory without the mark is never touched (not
provably the builder's, or its build has not locked it yet). flock is per host on local filesystems; NFS
clients map it to POSIX locks the server arbitrates.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

MARK = ".modeldeploy-staging"


@contextlib.contextmanager
def staging_directory(out: Path) -> Iterator[Path]:
    """A new locked, marked staging directory beside `out`, removed (then unlocked) on exit."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(out.parent)
    path = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        (path / MARK).touch()
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(descriptor)


def remove_dead_staging(parent: Path) -> list[Path]:
    """Remove the staging directories in `parent` that no live build holds; returns them."""
    removed = []
    for candidate in sorted(parent.glob(".*.tmp-*")):
        if candidate.is_symlink() or not (candidate / MARK).is_file():
            continue
        try:
            descriptor = os.open(candidate, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:  # removed meanwhile by another build
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a build is running in it
            os.close(descriptor)
            continue
        try:
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
        finally:
            os.close(descriptor)
    return removed
