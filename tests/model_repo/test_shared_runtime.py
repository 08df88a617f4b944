"""The shared runtime's pure parts (no Triton, no torch): the forwarder's key and arguments, the host's
bookkeeping, the codes carried across BLS, and the model set's generated directories. The behaviour
with a real tritonserver is in test_packing_serving.py (its `shared-runtime` runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_repo import model_set
from model_repo.runtime import forwarder
from model_repo.runtime.host import HostedModels, owner_alive, split_by_model

ENCODER_CONFIG = """name: "sentiment"
backend: "python"
max_batch_size: 8
instance_group [ { kind: KIND_GPU count: 2 } ]
parameters { key: "role" value { string_value: "encoder" } }
"""


def test_the_model_set_and_the_runtime_name_the_same_host() -> None:
    assert model_set.SHARED_HOST == forwarder.HOST_MODEL


def test_a_key_names_a_living_process_until_it_exits() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        key = forwarder.instance_key(child.pid, "sentiment", "/cache/abc/sentiment/1")
        assert json.loads(key)[2:] == ["sentiment", "/cache/abc/sentiment/1"]
        assert owner_alive(key)
    finally:
        child.kill()
        child.wait()
    assert not owner_alive(key)
    # A reused pid with another start time is another process.
    pid, started, *rest = json.loads(forwarder.instance_key(os.getpid(), "m", "/d"))
    assert not owner_alive(json.dumps([pid, str(int(started) + 1), *rest]))


def test_the_host_loads_the_built_directory_behind_the_served_link(tmp_path: Path) -> None:
    built = tmp_path / "cache" / "digest" / "sentiment"
    (built / "1").mkdir(parents=True)
    generated = tmp_path / "generated"
    generated.mkdir()
    (generated / "1").symlink_to(built / "1")
    served = tmp_path / "served"
    served.mkdir()
    (served / "sentiment").symlink_to(generated)
    args = {"model_repository": str(served / "sentiment"), "model_version": "1", "model_name": "sentiment"}
    assert forwarder.host_arguments(args) == {
        "model_repository": str(built),
        "model_version": "1",
        "model_name": "sentiment",
    }


def test_codes_survive_the_trip_through_bls() -> None:
    class Error:
        def code(self) -> str:
            return "__ErrorCode.INVALID_ARG"

        def message(self) -> str:
            return "input TEXT item 0 must be non-empty text: got empty"

    coded = forwarder.coded_message(Error())
    assert forwarder.split_coded_message(coded) == ("INVALID_ARG", Error().message())
    assert forwarder.split_coded_message("stub crashed") == ("INTERNAL", "stub crashed")


def test_a_load_refused_over_http_keeps_the_hosts_reason_alone() -> None:
    body = json.dumps({"error": "modeldeploy-code=INTERNAL:modeldeploy-host: loading the model failed: x"})
    assert forwarder._error_text(body) == "modeldeploy-host: loading the model failed: x"
    assert forwarder._error_text("<html>bad gateway</html>") == "<html>bad gateway</html>"


def test_the_host_splits_a_mixed_batch_by_model_in_arrival_order() -> None:
    assert split_by_model(["a", "b", "a", None, "b"]) == {"a": [0, 2], "b": [1, 4], None: [3]}


def test_the_host_releases_exactly_the_models_whose_forwarder_exited() -> None:
    class Role:
        finalized = False

        def finalize(self) -> None:
            self.finalized = True

    alive = {"one": True, "two": False}
    models = HostedModels(owner_alive=lambda key: alive[key])
    one, two = Role(), Role()
    models.add("one", one)
    models.add("two", two)
    assert models.release_orphans() == ["two"]
    assert models.keys() == ["one"] and two.finalized and not one.finalized
    assert models.get("two") is None and models.get("one") is one


def test_a_forwarder_config_runs_one_cpu_instance_of_the_forward_role() -> None:
    config = model_set.forwarder_config(ENCODER_CONFIG, "http://127.0.0.1:8000")
    assert 'string_value: "forward"' in config and 'string_value: "encoder"' not in config
    assert 'parameters { key: "server" value { string_value: "http://127.0.0.1:8000" } }' in config
    assert model_set.SERVER_PARAMETER == forwarder.SERVER_PARAMETER
    assert "instance_group [ { kind: KIND_CPU count: 1 } ]" in config and "KIND_GPU" not in config
    assert 'name: "sentiment"' in config and "max_batch_size: 8" in config


def _model(root: Path, config: str, files: tuple[str, ...] = model_set.HOST_RUNTIME_FILES) -> Path:
    (root / "1").mkdir(parents=True)
    (root / "config.pbtxt").write_text(config)
    for name in files:
        (root / "1" / name).write_text(f"# {name}\n")
    return root


@pytest.mark.parametrize(
    ("config", "files", "shareable"),
    [
        (ENCODER_CONFIG, model_set.HOST_RUNTIME_FILES, True),
        (
            ENCODER_CONFIG.replace("max_batch_size: 8", "max_batch_size: 0"),
            model_set.HOST_RUNTIME_FILES,
            False,
        ),
        (ENCODER_CONFIG.replace('"encoder"', '"generator"'), model_set.HOST_RUNTIME_FILES, False),
        (ENCODER_CONFIG, ("model.py",), False),  # built before the forwarder existed
    ],
    ids=["encoder", "no-batching", "generator", "old-build"],
)
def test_only_batching_encoders_with_the_runtime_files_are_shared(
    tmp_path: Path, config: str, files: tuple[str, ...], shareable: bool
) -> None:
    model = _model(tmp_path / "sentiment", config, files)
    assert (model_set.shareable_version(model) is not None) == shareable


def test_generated_directories_are_kept_while_linked_and_removed_after(tmp_path: Path) -> None:
    model = _model(tmp_path / "built" / "sentiment", ENCODER_CONFIG)
    (model / "warmup").mkdir()
    served, shared = tmp_path / "served", tmp_path / "served.shared"
    served.mkdir()
    runtime = model_set.SharedRuntime(shared, "KIND_GPU")
    links = model_set.shared_links(served, {"sentiment": model}, runtime, "127.0.0.1:8000")
    assert list(links) == [model_set.SHARED_HOST, "sentiment"]
    host, generated = links[model_set.SHARED_HOST], links["sentiment"]
    assert "kind: KIND_GPU" in (host / "config.pbtxt").read_text()
    assert sorted(p.name for p in (host / "1").iterdir()) == sorted(model_set.HOST_RUNTIME_FILES)
    assert (generated / "1").resolve() == (model / "1").resolve()
    assert (generated / "warmup").resolve() == (model / "warmup").resolve()
    # The same model again: the same directory, not a new one.
    assert model_set.shared_links(served, {"sentiment": model}, runtime, "127.0.0.1:8000") == links
    (served / "sentiment").symlink_to(generated)
    model_set.remove_unused_generated(served, shared)
    assert generated.is_dir() and not host.exists()  # the host is not linked yet in this test
