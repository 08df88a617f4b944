"""Find and run a local `tritonserver`: the one on PATH, else the one bundled in the nvidia-pytriton wheel.

The flags a generated repository is served with are `model_repo.triton_args`'s (pure, no processes), which
the operator's manifests use too."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import site
import socket
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self


class TritonError(RuntimeError):
    """tritonserver could not be found, started, or did not become ready: not a fault of the checkpoint or
    the build options (so not a BuildError), though the message still says what to look at."""


@dataclass(frozen=True)
class TritonInstallation:
    binary: Path
    backend_directory: Path | None  # None: the server's compiled-in default (/opt/tritonserver/backends)
    cache_directory: Path | None
    library_path: tuple[str, ...]


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modeldeploy"


def _pytriton_installation() -> TritonInstallation | None:
    try:
        import pytriton
    except ImportError:
        return None
    package = Path(pytriton.__file__).parent
    dist = package / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not binary.exists() or not stub.exists():
        return None
    # The server wants <backend-directory>/python/ to hold the backend library *and* the stub built for
    # this interpreter's Python version; the wheel keeps stubs for every version apart, so assemble one.
    backend_dir = (
        _cache_root() / f"triton-backends-py{version}-{stub.stat().st_size}-{int(stub.stat().st_mtime)}"
    )
    if not (backend_dir / "python" / "triton_python_backend_stub").exists():
        staging = Path(tempfile.mkdtemp(prefix=".backends-", dir=_ensure_dir(_cache_root())))
        shutil.copytree(dist / "backends", staging / "backends", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, staging / "backends" / "python" / "triton_python_backend_stub")
        with contextlib.suppress(OSError):  # another process assembled it first
            (staging / "backends").rename(backend_dir)
        shutil.rmtree(staging, ignore_errors=True)
    libs = package.parent / "nvidia_pytriton.libs"
    return TritonInstallation(
        binary=binary,
        backend_directory=backend_dir,
        cache_directory=dist / "caches",
        library_path=(str(libs),) if libs.exists() else (),
    )


def _ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_tritonserver() -> TritonInstallation:
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstallation(Path(on_path), None, None, ())
    bundled = _pytriton_installation()
    if bundled is not None:
        return bundled
    raise TritonError(
        "tritonserver not found: put it on PATH or install the bundled one with "
        "pip install 'modeldeploy[serve]' (nvidia-pytriton)"
    )


def server_environment(installation: TritonInstallation) -> dict[str, str]:
    """Environment under which the Python backend's stub finds this interpreter and its packages."""
    env = dict(os.environ)
    # The stub embeds libpython: the interpreter's own LIBDIR must win over any other libpython on the
    # system, else it fails with "undefined symbol: _PyModule_Add".
    libdir = sysconfig.get_config_var("LIBDIR")
    parts = [p for p in (libdir, *installation.library_path, env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = ":".join(parts)
    python_path = [*site.getsitepackages(), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = ":".join(p for p in python_path if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 now (the one helper for servers, tests and benchmarks)."""
    # Every socket stays open until all are picked, so the same port is never handed out twice.
    with contextlib.ExitStack() as sockets:
        ports = []
        for _ in range(count):
            sock = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port() -> int:
    (port,) = free_ports(1)
    return port


def port_or_free(preferred: int) -> int:
    """`preferred` if nothing is bound to it now (on any address), else a free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", preferred))
        except OSError:
            return free_port()
    return preferred


def http_ok(url: str, context: ssl.SSLContext | None = None, timeout_s: float = 2.0) -> bool:
    """Whether `url` answers 200 now (a health probe: any failure to connect is a no); `context` for TLS."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def stop_process_group(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM the process group `process` leads (started with start_new_session=True), then SIGKILL it
    if it has not exited within `timeout_s`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _has_flag(args: Sequence[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in args)


# tritonserver's flags that name a directory: the server runs in its own directory (`TritonServer.start`),
# so a relative one is made absolute against the caller's.
PATH_FLAGS = ("--model-repository", "--backend-directory", "--cache-directory")


def _absolute_paths(args: Sequence[str]) -> list[str]:
    out = []
    for arg in args:
        flag, equals, value = arg.partition("=")
        if equals and flag in PATH_FLAGS and value and not os.path.isabs(value):
            arg = f"{flag}={os.path.abspath(value)}"
        out.append(arg)
    return out


class ChildProcess:
    """A child process run as a context manager: `start()` on entry, `stop()` on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        if exc_type is None:
            self.exited_cleanly()

    def exited_cleanly(self) -> None:
        """After `stop()` on a context exit without an exception."""


class TritonServer(ChildProcess):
    """A tritonserver process serving one model repository, as a context manager.

    `extra_args` are raw tritonserver flags appended as given, so a caller can start the server with
    exactly the flags a Kubernetes container would use; flags it sets itself (ports, repository) are
    only added when `extra_args` does not already carry them. `launcher`, when given, is a command that
    execs `tritonserver` itself with the flags appended (a container's shell wrapper, such as the pods'
    `/bin/sh -c '... exec tritonserver "$@" ...' tritonserver`); it finds this installation's
    `tritonserver` first on its PATH.
    """

    def __init__(
        self,
        model_repository: Path | None,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        extra_args: Sequence[str] = (),
        ready_timeout_s: float = 180.0,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
        environment: Mapping[str, str] | None = None,
        launcher: Sequence[str] = (),
    ) -> None:
        self.model_repository = model_repository
        self.launcher = list(launcher)
        # Variables set for this server and its stubs only (e.g. OpenMP settings a benchmark compares).
        self.environment = dict(environment or {})
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.extra_args = list(extra_args)
        self.ready_timeout_s = ready_timeout_s
        self.host = host
        self._own_log = log_path is None
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self.installation = find_tritonserver()

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def binary_directory(self) -> str:
        """The installation's `tritonserver` directory: the server's working directory, first on a
        launcher's PATH."""
        return os.path.dirname(os.path.abspath(self.installation.binary))

    def command(self) -> list[str]:
        args = [os.path.abspath(self.installation.binary)]
        extra = self.extra_args
        if self.model_repository is not None and not _has_flag(extra, "--model-repository"):
            args.append(f"--model-repository={self.model_repository}")
        defaults = {
            "--http-port": str(self.http_port),
            "--grpc-port": str(self.grpc_port),
            "--metrics-port": str(self.metrics_port),
            "--exit-timeout-secs": "10",
        }
        for flag, value in defaults.items():
            if not _has_flag(extra, flag):
                args.append(f"{flag}={value}")
        if self.installation.backend_directory is not None and not _has_flag(extra, "--backend-directory"):
            args.append(f"--backend-directory={self.installation.backend_directory}")
        if self.installation.cache_directory is not None and not _has_flag(extra, "--cache-directory"):
            args.append(f"--cache-directory={self.installation.cache_directory}")
        args = _absolute_paths([*args, *extra])
        return [*self.launcher, *args[1:]] if self.launcher else args

    def start(self) -> None:
        env = {**server_environment(self.installation), **self.environment}
        if self.launcher:
            env["PATH"] = f"{self.binary_directory}:{env.get('PATH', '')}"
        with self.log_path.open("wb") as log:
            # In the binary's directory, as in its container (the image's working directory), not in the
            # caller's: started from the project's root, the generation engine's decoding steps at 64
            # clients ran 15-20% slower, for a cause not found (bench/README.md, text generation, session 14).
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=self.binary_directory,
            )
        self._stopping = False
        threading.Thread(
            target=self._reap, args=(self.process,), name="tritonserver-reaper", daemon=True
        ).start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def _reap(self, process: subprocess.Popen[bytes]) -> None:
        """Collect the server's exit status the moment it exits, and take its stubs with it unless `stop()`
        asked it to go.

        Unreaped, a crashed server stays a zombie, which its Python-backend stubs still take for a live
        parent: they keep running and keep the sockets they inherited open, so a client in the middle of a
        request (a model load waits up to ten minutes) hangs until its own timeout instead of failing."""
        process.wait()
        if not self._stopping:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def is_ready(self) -> bool:
        return http_ok(f"http://{self.http_url}/v2/health/ready")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                raise TritonError(
                    f"tritonserver exited with code {code} before it was ready; log:\n{self.log()}"
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        raise TritonError(f"tritonserver not ready within {self.ready_timeout_s:.0f}s; log:\n{self.log()}")

    def stop(self, timeout_s: float = 20.0) -> None:
        process = self.process
        if process is None:
            return
        self._stopping = True
        stop_process_group(process, timeout_s)
        # Python-backend stubs live in the server's process group; make sure none outlives it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        self.process = None

    def exited_cleanly(self) -> None:
        # A temporary log of its own choosing is kept only when something went wrong.
        if self._own_log:
            self.log_path.unlink(missing_ok=True)
