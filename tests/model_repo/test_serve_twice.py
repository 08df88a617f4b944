"""`modeldeploy serve` works twice with its defaults: two models one after the other (and the first
again, whose repository the first server ran from and wrote bytecode into), then both at the same time.
The real command, the real tritonserver; only TMPDIR points into the test's directory, where the default
work directories live."""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from conftest import serving

from model_repo.build import RECORD_FILE, build_repository, check_output
from model_repo.errors import BuildError
from model_repo.options import BuildOptions

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_bytecode_of_the_builders_own_files_is_not_foreign(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """What a Python-backend stub writes beside model.py when the repository is writable does not make
    the repository the user's; bytecode of a file the builder did not write does."""
    out = tmp_path / "repo"
    build_repository(BuildOptions(source=f"file://{checkpoints['text-classification']}"), out)
    cache = out / "model" / "1" / "__pycache__"
    cache.mkdir()
    check_output(out, force=False)  # an empty cache directory
    (cache / "model.cpython-311.pyc").write_bytes(b"bytecode")
    check_output(out, force=False)
    (cache / "notes.cpython-311.pyc").write_bytes(b"not of a file the builder wrote")
    with pytest.raises(BuildError, match=r"did not write: model/1/__pycache__/notes\.cpython-311\.pyc"):
        check_output(out, force=False)


@contextmanager
def _serve(source: Path, tmp: Path, log: Path, *options: str) -> Iterator[str]:
    """`modeldeploy serve --source file://<source>` with every other option at its default (or `options`),
    until ready; yields its HTTP address, then stops it with SIGTERM and checks it exited cleanly."""
    command = [
        str(Path(sys.executable).parent / "modeldeploy"),
        "serve",
        "--source",
        f"file://{source}",
        *options,
    ]
    with serving(command, log, env={**os.environ, "TMPDIR": str(tmp)}):
        match = re.search(r"HTTP +http://([\d.]+:\d+)", log.read_text())
        assert match, log.read_text()
        yield match.group(1)


def _outputs(address: str) -> set[str]:
    """The output names of the served model's answer to one text (LABEL, SCORE, SCORES or EMBEDDING)."""
    body = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["hello world"]}]}
    request = urllib.request.Request(
        f"http://{address}/v2/models/model/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return {output["name"] for output in json.load(response)["outputs"]}


def test_serve_twice_one_after_the_other_and_at_the_same_time(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    classifier, embedder = checkpoints["text-classification"], checkpoints["feature-extraction"]
    classifies, embeds = {"LABEL", "SCORE", "SCORES"}, {"EMBEDDING"}
    for run, (source, outputs) in enumerate(
        [(classifier, classifies), (embedder, embeds), (classifier, classifies)]
    ):
        with _serve(source, tmp_path, tmp_path / f"serve-{run}.log") as address:
            assert _outputs(address) == outputs
    with ExitStack() as both:
        first = both.enter_context(_serve(classifier, tmp_path, tmp_path / "serve-a.log"))
        second = both.enter_context(_serve(embedder, tmp_path, tmp_path / "serve-b.log"))
        assert first != second
        assert _outputs(first) == classifies and _outputs(second) == embeds
    assert "cache hit" in (tmp_path / "serve-2.log").read_text()
    repositories = sorted((tmp_path / "modeldeploy-serve").glob("*/repository"))
    assert len(repositories) == 2 and all((path / RECORD_FILE).exists() for path in repositories)
    # What the server wrote into the repositories (Python's bytecode of model.py), which the third serve,
    # and the concurrent ones, found and did not count as the user's.
    assert all(list(path.glob("model/1/__pycache__/model.*.pyc")) for path in repositories)


def _stub_environments(under: Path) -> list[dict[str, str]]:
    """The environments the Python-backend stubs serving a repository under `under` were started with."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if "stub" not in Path(argv[0].decode()).name or str(under) not in argv[1].decode():
                continue
            pairs = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        found.append(dict(p.decode().partition("=")[::2] for p in pairs if b"=" in p))
    return found


def test_the_cpu_wait_policy_reaches_the_stubs(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """spin gives the stubs libgomp's short spin count (it overrides the OMP_WAIT_POLICY=PASSIVE that
    model.py sets); passive leaves it out."""
    source = checkpoints["text-classification"]
    for policy, expected in (("passive", None), ("spin", "10000")):
        options = ("--cpu-wait-policy", policy, "--workdir", str(tmp_path / policy))
        with _serve(source, tmp_path, tmp_path / f"serve-{policy}.log", *options) as address:
            assert _outputs(address) == {"LABEL", "SCORE", "SCORES"}
            environments = _stub_environments(tmp_path / policy)
            assert environments, "no stub found"
            assert {env.get("GOMP_SPINCOUNT") for env in environments} == {expected}
