"""A real Prometheus (built by tests/cluster/build.sh from its Go module) as a process on this machine, with
one file_sd job whose targets the caller rewrites as the things it scrapes come and go.

Each target carries the labels a Kubernetes scrape would put on a pod's series (`namespace`, `pod`,
`service`...), so that queries written for the cluster select what this Prometheus scraped.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from model_repo.triton import free_port, http_ok, stop_process_group
from modeldeploy_dev.harness import wait_until


class PrometheusServer:
    def __init__(self, binary: Path, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.targets = directory / "targets.json"
        self.targets.write_text("[]")
        self.log_path = directory / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 60.0) -> PrometheusServer:
        config = self.directory / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "scraped",
                            "file_sd_configs": [{"files": [str(self.targets)], "refresh_interval": "1s"}],
                        }
                    ],
                }
            )
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until("Prometheus ready", lambda: http_ok(f"{self.url}/-/ready"), timeout=ready_timeout)
        return self

    def scrape(self, targets: Sequence[tuple[str, Mapping[str, str]]]) -> None:
        """Scrape each `host:port`'s /metrics, with its labels, from now on (instead of the previous set)."""
        groups = [{"targets": [address], "labels": dict(labels)} for address, labels in targets]
        partial = self.targets.with_suffix(".tmp")
        partial.write_text(json.dumps(groups))
        partial.replace(self.targets)

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, 10)
