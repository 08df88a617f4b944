"""The builder's output directory: which files in it the builder wrote (its record lists them), and
replacing it whole, atomically where the filesystem can.

A build replaces `--out` entirely, so it must never delete what it did not write: a directory that is not
one of its repositories, or foreign files inside one, are refused unless forced.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

from model_repo.errors import BuildError

RECORD_FILE = "modeldeploy.json"


def read_record(repository: Path) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads((repository / RECORD_FILE).read_text())
        return record
    except (OSError, json.JSONDecodeError):
        return None


def key_list(keys: list[str], shown: int = 4) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directories in one step (renameat2 RENAME_EXCHANGE); False where the kernel, the C
    library or the filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def replace_directory(staged: Path, out: Path) -> None:
    """Move `staged` to `out`. An existing `out` is exchanged with it in one step where the filesystem
    can, so a server reading `out` sees the old repository or the new one, never none; then the old one,
    now at `staged`, is removed."""
    if not out.exists():
        staged.rename(out)
        return
    if _exchange(staged, out):
        shutil.rmtree(staged, ignore_errors=True)
        return
    old = out.parent / f".{out.name}.old-{staged.parent.name}"
    out.rename(old)
    try:
        staged.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def tree(root: Path) -> list[str]:
    """Every file and symlink under `root`, relative, sorted (directories are implied by their files)."""
    found = []
    for directory, subdirectories, files in os.walk(root):
        base = Path(directory).relative_to(root)
        found += [str(base / name) for name in files]
        # A symlinked or empty directory is an entry of its own: nothing below it would name it.
        for name in subdirectories:
            path = Path(directory) / name
            if path.is_symlink() or not any(path.iterdir()):
                found.append(str(base / name) + "/")
    return sorted(found)


def _bytecode_of(entry: str, written: set[str]) -> bool:
    """Whether `entry` is Python's bytecode cache of a .py file the builder wrote (`<dir>/__pycache__/
    <name>.<tag>.pyc`, or that directory left empty): what a Python-backend stub writes when it imports
    model.py from a writable repository. Not the user's, so not foreign."""
    path = Path(entry)
    if entry.endswith("/"):
        return path.name == "__pycache__" and any(
            Path(name).parent == path.parent and name.endswith(".py") for name in written
        )
    if path.parent.name != "__pycache__" or path.suffix != ".pyc":
        return False
    return str(path.parent.parent / (path.name.partition(".")[0] + ".py")) in written


def _foreign_entries(out: Path, record: dict[str, Any]) -> list[str]:
    """What `out` holds beyond what the builder wrote there (the record lists its files)."""
    written = record.get("files")
    if isinstance(written, list):
        known = set(written) | {RECORD_FILE}
        return [entry for entry in tree(out) if entry not in known and not _bytecode_of(entry, known)]
    # Records of older builders list no files: their model directories all start with the model name.
    prefix = str(record.get("model_name") or "")
    return sorted(
        entry.name + ("/" if entry.is_dir() else "")
        for entry in out.iterdir()
        if entry.name != RECORD_FILE and not (prefix and entry.name.startswith(prefix))
    )


def check_output(out: Path, force: bool) -> None:
    """Refuse to replace what the builder did not write: a directory that is not one of its repositories,
    or one of its repositories that holds files it did not write. `force` replaces it regardless."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} exists and is not a directory")
    if force or not out.exists() or not any(out.iterdir()):
        return
    record = read_record(out)
    if record is None:
        entries = sorted(entry.name for entry in out.iterdir())
        raise BuildError(
            f"--out {out} is not empty and is not a repository this builder wrote (no {RECORD_FILE}); "
            f"it holds {key_list(entries)}. A build replaces --out whole: choose another directory, or "
            "pass --force to delete what it holds"
        )
    foreign = _foreign_entries(out, record)
    if foreign:
        raise BuildError(
            f"--out {out} is a repository this builder wrote, but it also holds files the builder did not "
            f"write: {key_list(foreign)}. A build replaces the repository whole (Triton would take a "
            "foreign directory for a model); move them elsewhere, or pass --force to delete them"
        )
