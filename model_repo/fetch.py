"""Fetch a checkpoint from a source URI into a local directory, taking only the files a build needs."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Generic, TypeVar
from urllib.parse import urlparse

from model_repo.checkpoint import SENTENCEPIECE_FILES, TOKENIZER_FILES
from model_repo.errors import BuildError
from model_repo.options import SOURCE_SCHEMES, Progress
from model_repo.progress import build_progress

# Files a build reads: configuration, tokenizer, weights and sentence-transformers module configs.
# Everything else in a checkpoint (other frameworks' weights, READMEs, ONNX exports...) is left behind.
_METADATA_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    *TOKENIZER_FILES,
    SENTENCEPIECE_FILES,
    "chat_template.jinja",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "*_Pooling/config.json",
)
_SAFETENSORS_PATTERNS: tuple[str, ...] = ("*.safetensors", "model.safetensors.index.json")
_PICKLE_PATTERNS: tuple[str, ...] = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
# Code shipped inside a checkpoint is fetched only when the user trusts it.
_REMOTE_CODE_PATTERNS: tuple[str, ...] = ("*.py",)

T = TypeVar("T")

DEFAULT_PVC_ROOT = "/mnt/pvc"


@dataclass(frozen=True)
class FetchedCheckpoint:
    """A checkpoint on local disk: `path` holds `files` (relative POSIX paths)."""

    path: Path
    files: tuple[str, ...]
    revision: str | None


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def select_files(available: Iterable[str], trust_remote_code: bool) -> list[str]:
    """The subset of a checkpoint's files a build needs: safetensors weights win over pickles."""
    names = sorted(set(available))
    has_safetensors = any(name.endswith(".safetensors") for name in names)
    weight_patterns = _SAFETENSORS_PATTERNS if has_safetensors else _PICKLE_PATTERNS
    patterns = _METADATA_PATTERNS + weight_patterns
    if trust_remote_code:
        patterns += _REMOTE_CODE_PATTERNS
    selected = []
    for name in names:
        depth = name.count("/")
        # Only sentence-transformers module configs live below the top level.
        if depth > 1 or (depth == 1 and not fnmatch.fnmatchcase(name, "*_Pooling/config.json")):
            continue
        if _matches(name, patterns):
            selected.append(name)
    return selected


def _check_relative(name: str, what: str) -> None:
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts:
        raise BuildError(f"refusing {what} {name!r}: path escapes the checkpoint directory")


def _split_uri(source: str) -> tuple[str, str, str]:
    parsed = urlparse(source)
    scheme = parsed.scheme
    if scheme not in SOURCE_SCHEMES:
        raise BuildError(
            f"unsupported source {source!r}: the scheme must be one of "
            + ", ".join(f"{s}://" for s in SOURCE_SCHEMES)
        )
    if parsed.query or parsed.fragment or parsed.params:
        raise BuildError(f"source {source!r} must not carry a query or fragment")
    path = parsed.path
    if ".." in PurePosixPath(path).parts or ".." in parsed.netloc:
        raise BuildError(f"refusing source {source!r}: '..' path segments are not allowed")
    return scheme, parsed.netloc, path


def local_path_for(source: str) -> Path | None:
    """The directory a `file://` or `pvc://` source names, or None for remote sources."""
    scheme, netloc, path = _split_uri(source)
    if scheme == "file":
        if netloc not in ("", "localhost"):
            raise BuildError(f"file:// source must be an absolute local path, got {source!r}")
        if not path.startswith("/"):
            raise BuildError(f"file:// source must be an absolute path, got {source!r}")
        return Path(path)
    if scheme == "pvc":
        if not netloc:
            raise BuildError(f"pvc:// source needs a claim name: pvc://<claim>/<path>, got {source!r}")
        root = Path(os.environ.get("MODELDEPLOY_PVC_ROOT", DEFAULT_PVC_ROOT))
        return root / netloc / path.lstrip("/")
    return None


def _list_local(root: Path) -> list[str]:
    """Every regular file under root, refusing symlinks that point outside it."""
    resolved_root = root.resolve()
    names = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for entry in [*dirnames, *filenames]:
            full = Path(dirpath) / entry
            if full.is_symlink():
                target = full.resolve()
                if not target.is_relative_to(resolved_root):
                    rel = full.relative_to(root).as_posix()
                    raise BuildError(
                        f"refusing checkpoint file {rel!r}: it is a symlink to {target}, "
                        f"outside the source directory {root}"
                    )
        for filename in filenames:
            full = Path(dirpath) / filename
            if full.is_file():
                names.append(full.relative_to(root).as_posix())
    return names


def _fetch_local(root: Path, source: str, trust_remote_code: bool) -> FetchedCheckpoint:
    if not root.exists():
        raise BuildError(f"source {source!r}: {root} does not exist")
    if not root.is_dir():
        raise BuildError(f"source {source!r}: {root} is not a directory")
    files = select_files(_list_local(root), trust_remote_code)
    return FetchedCheckpoint(path=root, files=tuple(files), revision=None)


def _fetch_hf(
    repo_id: str, revision: str | None, dest: Path, trust_remote_code: bool, progress: Progress
) -> FetchedCheckpoint:
    try:
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise BuildError("hf:// sources need huggingface_hub: pip install 'modeldeploy[builder]'") from exc
    token = os.environ.get("HF_TOKEN") or None
    try:
        info = HfApi().model_info(repo_id, revision=revision, token=token, files_metadata=True)
        sizes = {sibling.rfilename: sibling.size for sibling in info.siblings or []}
        wanted = select_files(sizes, trust_remote_code)
        for name in wanted:
            _check_relative(name, "file")
        progress(f"downloading {len(wanted)} files of {repo_id}@{info.sha}")
        with build_progress(progress).watching(dest, _total([sizes[name] for name in wanted])):
            local = snapshot_download(
                repo_id, revision=info.sha, allow_patterns=wanted, local_dir=dest, token=token
            )
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise BuildError(f"hf://{repo_id}@{revision or 'main'}: {exc}") from exc
    except HfHubHTTPError as exc:
        raise BuildError(f"hf://{repo_id}: download failed: {exc}") from exc
    return FetchedCheckpoint(path=Path(local), files=tuple(wanted), revision=info.sha)


def _total(sizes: Iterable[int | None]) -> int | None:
    """The bytes to download, if every size is known."""
    known = list(sizes)
    return None if any(size is None for size in known) else sum(size for size in known if size is not None)


def _object_prefix(prefix: str) -> str:
    """A bucket path as the prefix of its objects' keys ("" for the whole bucket)."""
    return prefix.strip("/") + "/" if prefix.strip("/") else ""


@dataclass(frozen=True)
class BucketListing(Generic[T]):
    """A bucket prefix's objects by their name in the checkpoint, and how to name and download one."""

    objects: Mapping[str, T]
    url_of: Callable[[T], str]
    download: Callable[[T, Path], None]
    size_of: Callable[[T], int | None] = lambda _object: None


def _download_objects(
    listing: BucketListing[T], dest: Path, trust_remote_code: bool, progress: Progress
) -> FetchedCheckpoint:
    """Download the objects a build needs."""
    wanted = select_files(listing.objects, trust_remote_code)
    for name in wanted:
        _check_relative(name, "object")
    total = _total(listing.size_of(listing.objects[name]) for name in wanted)
    with build_progress(progress).watching(dest, total):
        for name in wanted:
            progress(f"downloading {listing.url_of(listing.objects[name])}")
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            listing.download(listing.objects[name], target)
    return FetchedCheckpoint(path=dest, files=tuple(wanted), revision=None)


def _s3_objects(bucket: str, prefix: str) -> BucketListing[str]:
    try:
        import boto3
    except ImportError as exc:
        raise BuildError("s3:// sources need boto3: pip install 'modeldeploy[s3]'") from exc
    client = boto3.client("s3")
    prefix = _object_prefix(prefix)
    keys: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = str(obj["Key"])
            keys[key[len(prefix) :]] = key
            sizes[key] = int(obj.get("Size", 0))
    return BucketListing(
        keys,
        url_of=lambda key: f"s3://{bucket}/{key}",
        download=lambda key, target: client.download_file(bucket, key, str(target)),
        size_of=sizes.get,
    )


def _gs_objects(bucket_name: str, prefix: str) -> BucketListing[Any]:
    try:
        from google.cloud import storage
    except ImportError as exc:
        raise BuildError("gs:// sources need google-cloud-storage: pip install 'modeldeploy[gcs]'") from exc
    bucket = storage.Client().bucket(bucket_name)
    prefix = _object_prefix(prefix)
    return BucketListing(
        {blob.name[len(prefix) :]: blob for blob in bucket.list_blobs(prefix=prefix)},
        url_of=lambda blob: f"gs://{bucket_name}/{blob.name}",
        download=lambda blob, target: blob.download_to_filename(str(target)),
        size_of=lambda blob: blob.size,
    )


def fetch(
    source: str,
    revision: str | None,
    download_dir: Path,
    trust_remote_code: bool = False,
    progress: Progress = lambda _message: None,
) -> FetchedCheckpoint:
    """Make the checkpoint at `source` available locally.

    Local sources (`file://`, `pvc://`) are read in place; remote ones are downloaded into
    `download_dir`, which the caller owns and removes.
    """
    local = local_path_for(source)
    if local is not None:
        if revision:
            raise BuildError(f"--revision applies to hf:// sources only, not {source!r}")
        return _fetch_local(local, source, trust_remote_code)
    scheme, netloc, path = _split_uri(source)
    if not netloc:
        raise BuildError(f"source {source!r} needs a {'repository' if scheme == 'hf' else 'bucket'} name")
    if scheme == "hf":
        repo_id = f"{netloc}/{path.strip('/')}" if path.strip("/") else netloc
        return _fetch_hf(repo_id, revision, download_dir, trust_remote_code, progress)
    if revision:
        raise BuildError(f"--revision applies to hf:// sources only, not {source!r}")
    listing = _s3_objects(netloc, path) if scheme == "s3" else _gs_objects(netloc, path)
    return _download_objects(listing, download_dir, trust_remote_code, progress)
