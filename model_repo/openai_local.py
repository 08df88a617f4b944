"""The frontend as a child process next to a local tritonserver (`modeldeploy serve --openai`, tests).

Outside the `openai_frontend` package on purpose: the Triton runtime image carries that package alone,
while this module runs it as `python -m model_repo.openai_frontend` and reuses `model_repo.triton`.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from model_repo.openai_frontend.token_arrays import TokenArrays
from model_repo.triton import ChildProcess, http_ok, stop_process_group


class FrontendError(RuntimeError):
    """The frontend exited or did not become ready."""


class LocalFrontend(ChildProcess):
    """`python -m model_repo.openai_frontend` on `port`, as a context manager; ready when Triton is."""

    def __init__(
        self,
        repository: Path,
        triton_grpc: str,
        port: int,
        *,
        model_id: str | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        ready_timeout_s: float = 120.0,
        enabled: bool = True,
        api_keys_dir: Path | None = None,
        token_arrays: TokenArrays = TokenArrays.MODEL,
        calls_in_flight: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.command = [
            sys.executable,
            "-m",
            "model_repo.openai_frontend",
            f"--model-repository={repository}",
            f"--triton-grpc={triton_grpc}",
            f"--host={host}",
            f"--port={port}",
            "--log-level=warning",
            f"--token-arrays={token_arrays.value}",
        ]
        if model_id:
            self.command.append(f"--model-id={model_id}")
        if api_keys_dir is not None:
            self.command.append(f"--api-keys-dir={api_keys_dir}")
        if calls_in_flight is not None:
            self.command.append(f"--calls-in-flight={calls_in_flight}")
        self.host, self.port = host, port
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def is_ready(self) -> bool:
        return http_ok(f"http://{self.host}:{self.port}/health/ready")

    def log(self) -> str:
        if self.log_path is None:
            return ""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def start(self) -> None:
        if not self.enabled:
            return
        log = self.log_path.open("wb") if self.log_path is not None else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            if self.log_path is not None and not isinstance(log, int):
                log.close()
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self.process = None
                raise FrontendError(f"the OpenAI frontend exited with code {code}; log:\n{self.log()}")
            if self.is_ready():
                return
            time.sleep(0.2)
        self.stop()
        raise FrontendError(f"the OpenAI frontend was not ready within {self.ready_timeout_s:.0f}s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process_group(process, 15)


DEFAULT_LOCAL_PORT = 9000


def write_api_keys(directory: Path, keys: Sequence[str]) -> Path:
    """`keys`, one a line, in `directory`/keys (readable by the owner only), as the sidecar reads them."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / "keys"
    staged = directory / ".keys.tmp"
    staged.touch(mode=0o600)
    staged.write_text("".join(f"{key}\n" for key in keys))
    staged.replace(path)  # atomic: the running sidecar never reads half a file
    return directory


def openai_frontend_for(
    repository: Path,
    triton_grpc: str,
    workdir: Path,
    *,
    enabled: bool,
    api_keys: Sequence[str] = (),
    port: int = DEFAULT_LOCAL_PORT,
    token_arrays: TokenArrays = TokenArrays.MODEL,
) -> LocalFrontend:
    """The frontend `modeldeploy serve --openai` runs (a no-op one without --openai), on `port`;
    with `api_keys`, only requests carrying one of them are served; `token_arrays`: whose ids the token
    arrays of /v1/embeddings hold."""
    keys_dir = write_api_keys(workdir / "api-keys", api_keys) if enabled and api_keys else None
    return LocalFrontend(
        repository,
        triton_grpc,
        port,
        log_path=workdir / "openai-frontend.log",
        ready_timeout_s=600,
        enabled=enabled,
        api_keys_dir=keys_dir,
        token_arrays=token_arrays,
    )
