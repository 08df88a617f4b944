"""The real tritonserver (bundled in nvidia-pytriton, CPU) as `model_repo.triton.TritonServer` runs it: when
the server dies of a crash nobody asked for, its Python-backend stubs go with it at once and nothing keeps
its ports, so a client fails promptly instead of waiting out its timeout. The crash is a real signal sent
to the real server (tritonserver once died of SIGSEGV loading a model in this suite; that cannot be
produced on demand)."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from model_repo.build import build_repository
from model_repo.options import BuildOptions
from model_repo.triton import TritonServer
from model_repo.triton_args import repository_server_args

pytestmark = pytest.mark.triton


def _group_members(group: int) -> list[int]:
    """Live (not zombie) processes of process group `group`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, process_group = fields[0], int(fields[2])
        if process_group == group and state != "Z":
            members.append(int(entry.name))
    return members


@pytest.mark.parametrize("crash", [signal.SIGSEGV, signal.SIGKILL], ids=["segfault", "killed"])
def test_a_crashed_server_is_reaped_and_takes_its_stubs_and_ports_with_it(
    checkpoints: dict[str, Path], tmp_path: Path, crash: signal.Signals
) -> None:
    source = f"file://{checkpoints['text-classification']}"
    repository = build_repository(BuildOptions(source=source), tmp_path / "repo").path
    server = TritonServer(repository, extra_args=repository_server_args(), log_path=tmp_path / "server.log")
    with server:
        assert server.process is not None
        leader = server.process.pid
        stubs = [pid for pid in _group_members(leader) if pid != leader]
        assert stubs, "a Python-backend model runs in a stub of the server's process group"

        os.kill(leader, crash)
        deadline = time.monotonic() + 15
        while _group_members(leader) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _group_members(leader) == [], "the stubs outlived their server"
        # Reaped, not left a zombie (which the stubs would take for a live parent).
        assert not Path(f"/proc/{leader}").exists()
        assert server.process.returncode is not None  # read, not polled: the reaper collected it

        started = time.monotonic()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=30)
        assert time.monotonic() - started < 5, "something still held the server's port"
    if crash == signal.SIGSEGV:
        assert "Signal (11) received" in server.log()  # the crash is Triton's own handling of it
