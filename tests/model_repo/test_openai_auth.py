"""API keys on the OpenAI-compatible sidecar, and Triton kept on the loopback behind it (docs/security.md).

The stack is what a pod with spec.api.auth runs: the real tritonserver, started through the Deployment's
own launcher command (its administrative APIs restricted to a value drawn at start) with its HTTP and
gRPC on 127.0.0.1 only, and the sidecar reading its keys from a directory laid out as the kubelet lays
out a Secret volume (files are links into `..data`, which a Secret update swaps atomically). Every call
goes through the real `openai` SDK unless the test is about the raw HTTP shape.
"""

from __future__ import annotations

import errno
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from conftest import serving

from model_repo.build import BuildOptions, build_repository
from model_repo.openai_frontend.auth import (
    DEFAULT_REFRESH_SECONDS,
    UNAUTHORIZED_MESSAGE,
    ApiKeys,
    bearer_token,
)
from model_repo.openai_local import LocalFrontend
from model_repo.triton import TritonServer, free_port, free_ports
from model_repo.triton_args import loopback_server_args, repository_server_args
from modeldeploy.manifests.deployment import TRITON_LAUNCHER
from modeldeploy_dev.kubelet import triton_command

MODEL = "minilm"
KEY_A, KEY_B, KEY_C = "sk-first-0123456789abcdef", "sk-second-fedcba9876543210", "sk-third-00112233"


# ------------------------------------------------------------------------------------------ in-process


def _secret_volume(directory: Path, files: dict[str, str], generation: int) -> None:
    """Write `files` the way the kubelet's atomic writer updates a Secret volume: a new timestamped
    directory, `..data` swapped to it by a rename, each key a link through `..data`."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"..gen_{generation}"
    target.mkdir()
    for name, text in files.items():
        (target / name).write_text(text)
    staged = directory / "..data_tmp"
    staged.symlink_to(target.name)
    staged.rename(directory / "..data")
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    for stale in directory.iterdir():
        if stale.is_symlink() and stale.name not in files and not stale.name.startswith(".."):
            stale.unlink()


def test_keys_are_every_non_empty_line_of_every_file_and_follow_the_directory(tmp_path: Path) -> None:
    now = [0.0]
    _secret_volume(tmp_path, {"keys": f"{KEY_A}\n\n  {KEY_B}  \n"}, 1)
    keys = ApiKeys(tmp_path, refresh_seconds=2.0, clock=lambda: now[0])
    assert keys.count == 2
    assert keys.accepts(KEY_A.encode()) and keys.accepts(KEY_B.encode())
    assert not keys.accepts(KEY_A[:-1].encode()) and not keys.accepts(b"")
    _secret_volume(tmp_path, {"keys": f"{KEY_B}\n", "next": f"{KEY_C}\n"}, 2)
    now[0] = 1.9  # within the refresh interval: the old set still holds
    assert keys.accepts(KEY_A.encode())
    now[0] = 2.0
    assert not keys.accepts(KEY_A.encode())
    assert keys.accepts(KEY_B.encode()) and keys.accepts(KEY_C.encode()) and keys.count == 2


def test_a_missing_or_empty_key_directory_refuses_everything(tmp_path: Path) -> None:
    assert ApiKeys(tmp_path / "absent").count == 0
    assert not ApiKeys(tmp_path / "absent").accepts(b"anything")
    (tmp_path / "empty").mkdir()
    assert not ApiKeys(tmp_path / "empty").accepts(b"")


def test_a_read_racing_a_secret_update_keeps_the_current_keys_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_repo.openai_frontend import auth

    now = [0.0]
    _secret_volume(tmp_path, {"keys": f"{KEY_A}\n"}, 1)
    keys = ApiKeys(tmp_path, refresh_seconds=2.0, clock=lambda: now[0])
    real_read = auth.read_keys
    failures = [OSError("a file vanished between listing and reading")]

    def racing_read(directory: Path) -> list[bytes]:
        # A stand-in for the kubelet swapping the volume mid-read, a race no test can time on purpose.
        if failures:
            raise failures.pop()
        return real_read(directory)

    monkeypatch.setattr(auth, "read_keys", racing_read)
    now[0] = 5.0
    assert keys.accepts(KEY_A.encode())  # the failed read kept the keys in force
    _secret_volume(tmp_path, {"keys": f"{KEY_B}\n"}, 2)
    now[0] = 5.1  # within the interval, but the failed read asked for another look at once
    assert not keys.accepts(KEY_A.encode()) and keys.accepts(KEY_B.encode())


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (b"Bearer abc", b"abc"),
        (b"bearer   abc ", b"abc"),
        (b"Basic abc", None),
        (b"Bearer ", None),
        (b"abc", None),
    ],
)
def test_only_a_bearer_token_is_read(header: bytes, token: bytes | None) -> None:
    assert bearer_token({"headers": [(b"authorization", header)]}) == token
    assert bearer_token({"headers": []}) is None


# ------------------------------------------------------------------------------------------ real stack


@dataclass
class Stack:
    server: TritonServer
    frontend: LocalFrontend
    keys_dir: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.frontend.port}"

    def client(self, key: str) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.frontend.base_url, api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("auth")
    options = BuildOptions(source=f"file://{minilm_path}", model_name=MODEL, max_batch_size=2)
    repository = build_repository(options, root / "repository").path
    keys_dir = root / "api-keys"
    _secret_volume(keys_dir, {"keys": f"{KEY_A}\n", "next": f"{KEY_B}\n"}, 1)
    args = ["--strict-readiness=true", *loopback_server_args(), *repository_server_args()]
    # Started by the pod's launcher as the kubelet runs it, so the restricted-API flags are the pod's.
    launcher = triton_command({"command": ["/bin/sh", "-c", TRITON_LAUNCHER, "tritonserver"]}).launcher
    with TritonServer(repository, extra_args=args, ready_timeout_s=300, launcher=launcher) as server:
        frontend = LocalFrontend(
            repository, server.grpc_url, free_port(), log_path=root / "frontend.log", api_keys_dir=keys_dir
        )
        with frontend:
            yield Stack(server, frontend, keys_dir)


def _openai_error(exc: Any) -> dict[str, Any]:
    body: dict[str, Any] = exc.response.json()
    return body


@pytest.mark.triton
@pytest.mark.slow
def test_no_key_and_wrong_keys_get_the_same_401_in_openais_shape(stack: Stack) -> None:
    import openai

    client = stack.client(KEY_A)
    with pytest.raises(openai.AuthenticationError) as missing:
        client.embeddings.create(model=MODEL, input="hello", extra_headers={"Authorization": openai.Omit()})
    assert missing.value.status_code == 401
    bodies = [_openai_error(missing.value)]
    for wrong in ("sk-wrong", KEY_A[:-1], KEY_A + "x", KEY_B.upper()):
        with pytest.raises(openai.AuthenticationError) as refused:
            stack.client(wrong).embeddings.create(model=MODEL, input="hello")
        assert refused.value.status_code == 401
        bodies.append(_openai_error(refused.value))
    # One answer whatever was wrong: nothing tells a caller how close a guess came or which keys exist.
    assert all(body == bodies[0] for body in bodies)
    assert bodies[0] == {
        "error": {
            "message": UNAUTHORIZED_MESSAGE,
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert missing.value.response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.triton
@pytest.mark.slow
def test_each_of_two_keys_is_served(stack: Stack) -> None:
    for key in (KEY_A, KEY_B):
        client = stack.client(key)
        answer = client.embeddings.create(model=MODEL, input=["hello", "world"])
        assert [len(item.embedding) for item in answer.data] == [384, 384]
        assert [model.id for model in client.models.list()] == [MODEL]


@pytest.mark.triton
@pytest.mark.slow
def test_health_is_open_and_everything_else_needs_a_key(stack: Stack) -> None:
    assert httpx.get(f"{stack.base}/health/live", timeout=10).status_code == 200
    assert httpx.get(f"{stack.base}/health/ready", timeout=10).status_code == 200
    for path in ("/v1/models", "/v1/models/minilm", "/docs", "/openapi.json", "/no-such-route"):
        response = httpx.get(f"{stack.base}{path}", timeout=10)
        assert response.status_code == 401, path  # an unknown path is no 404: routes are not probed
    # Routes outside /v1 and /v2 (TEI's) answer in TEI's error shape.
    response = httpx.post(f"{stack.base}/embed", json={"inputs": "hi"}, timeout=10)
    assert response.status_code == 401
    assert response.json() == {"error": UNAUTHORIZED_MESSAGE, "error_type": "Unauthorized"}


@pytest.mark.triton
@pytest.mark.slow
def test_a_changed_secret_refuses_the_old_key_within_the_bound_without_a_restart(stack: Stack) -> None:
    import openai

    process = stack.frontend.process
    assert process is not None
    pid = process.pid
    stack.client(KEY_A).models.list()
    # Rotation: KEY_A leaves, KEY_B stays, KEY_C arrives (a new generation of the Secret volume).
    _secret_volume(stack.keys_dir, {"next": f"{KEY_B}\n", "newest": f"{KEY_C}\n"}, 2)
    changed = time.monotonic()
    while True:
        try:
            stack.client(KEY_A).models.list()
        except openai.AuthenticationError:
            break
        assert time.monotonic() - changed < DEFAULT_REFRESH_SECONDS + 3.0, "the old key is still accepted"
        time.sleep(0.1)
    refused_after = time.monotonic() - changed
    assert refused_after <= DEFAULT_REFRESH_SECONDS + 3.0
    stack.client(KEY_B).models.list()
    stack.client(KEY_C).models.list()
    # The same process all along.
    assert stack.frontend.process is process and process.poll() is None and process.pid == pid


def _outward_address() -> str | None:
    """An address of this machine that is not loopback (the pod's address, in a pod)."""
    # Connecting a UDP socket sends nothing: it only picks the interface a packet would leave by.
    for target in ("10.254.254.254", "192.0.2.1", "203.0.113.1"):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.connect((target, 9))
            address: str = probe.getsockname()[0]
        except OSError:
            continue
        finally:
            probe.close()
        if not address.startswith("127."):
            return address
    return None


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        return exc.errno == errno.ECONNREFUSED
    return False


@pytest.mark.triton
@pytest.mark.slow
def test_triton_answers_on_loopback_only_and_keeps_its_admin_apis_to_itself(stack: Stack) -> None:
    outward = _outward_address()
    if outward is None:
        pytest.skip("this machine has no non-loopback IPv4 address to probe from")
    server = stack.server
    for port in (server.http_port, server.grpc_port):
        assert _refused(outward, port), f"Triton port {port} answers on {outward}"
    assert (
        urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/v2/health/ready", timeout=5).status
        == 200
    )
    # The metrics port is not a serving port: it stays where Prometheus can scrape it (the
    # NetworkPolicy's monitoringNamespace is what limits it).
    assert not _refused(outward, server.metrics_port)
    # The repository index and model control answer no one, not even on the loopback, without the
    # value the launcher drew at start.
    index = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/v2/repository/index", method="POST")
    with pytest.raises(urllib.error.HTTPError) as restricted:
        urllib.request.urlopen(index, timeout=5)
    assert restricted.value.code == 403
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    with pytest.raises(InferenceServerException, match="restricted"):
        client.get_model_repository_index()
    with pytest.raises(InferenceServerException, match="restricted"):
        client.unload_model(MODEL)
    assert client.is_model_ready(MODEL)  # what the sidecar needs still answers


# ------------------------------------------------------------------------------------------ serve


def test_serve_refuses_an_api_key_without_the_openai_api(tmp_path: Path) -> None:
    import subprocess
    import sys

    command = [str(Path(sys.executable).parent / "modeldeploy"), "serve", "--source", "file:///nowhere"]
    result = subprocess.run(
        [*command, "--api-key", "k", "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "--api-key applies to the OpenAI API; add --openai" in result.stderr


def _command_lines() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return found


@pytest.mark.triton
@pytest.mark.slow
def test_modeldeploy_serve_openai_takes_a_key_and_keeps_triton_on_loopback(
    minilm_path: Path, tmp_path: Path
) -> None:
    import sys

    import openai

    from model_repo.openai_local import DEFAULT_LOCAL_PORT

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", DEFAULT_LOCAL_PORT)) == 0:
            pytest.skip(f"port {DEFAULT_LOCAL_PORT} is taken on this machine")
    ports = free_ports(3)
    command = [
        str(Path(sys.executable).parent / "modeldeploy"), "serve",
        "--source", f"file://{minilm_path}", "--model-name", MODEL, "--max-batch-size", "2", "--openai",
        "--workdir", str(tmp_path), "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
        "--metrics-port", str(ports[2]),
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    # The key through the environment, as the help advises: it must not show in any process's arguments.
    with serving(command, log, env={**os.environ, "MODELDEPLOY_API_KEY": KEY_C}, stop_s=60):
        assert "API key required" in log.read_text()
        base = f"http://127.0.0.1:{DEFAULT_LOCAL_PORT}/v1"
        keyed = openai.OpenAI(base_url=base, api_key=KEY_C, max_retries=0, timeout=60)
        assert len(keyed.embeddings.create(model=MODEL, input="hello").data[0].embedding) == 384
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key=KEY_A, max_retries=0).models.list()
        assert not any(KEY_C in line for line in _command_lines())
        outward = _outward_address()
        if outward is not None:
            assert _refused(outward, ports[0]) and _refused(outward, ports[1])
