"""Reading a running builder's progress: the last lines of its log (pods/log), no more often than every
PROGRESS_POLL_SECONDS per ModelDeployment, parsed into its latest report (model_repo.progress)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from model_repo.progress import latest_report
from modeldeploy.kube import Cluster, KubeError
from modeldeploy.labels import MODEL_BUILDER
from modeldeploy.observations import BuilderReport

logger = logging.getLogger(__name__)

# While a builder runs, its log is read (and the status refreshed) at most this often: its reports say
# how far the build is, and nothing else triggers a reconciliation while bytes arrive.
PROGRESS_POLL_SECONDS = 5.0
# The log lines read to find the latest report (the builder writes one every couple of seconds).
PROGRESS_LOG_LINES = 20


class BuildProgressReader:
    def __init__(self, cluster: Cluster, clock: Callable[[], float] = time.monotonic) -> None:
        self.cluster = cluster
        self._clock = clock
        # uid -> the report read last: (monotonic time, pod, report or None).
        self._last: dict[str, tuple[float, str, BuilderReport | None]] = {}

    def forget(self, uid: str) -> None:
        self._last.pop(uid, None)

    async def latest(self, uid: str, namespace: str, building: list[str]) -> BuilderReport | None:
        """The latest report of one of the pods in `building` (the one read before, while it builds);
        between reads, and when its log cannot be read, the report read last."""
        if not building:
            self.forget(uid)
            return None
        now = self._clock()
        last = self._last.get(uid)
        if last is not None and last[1] in building and now - last[0] < PROGRESS_POLL_SECONDS:
            return last[2]
        pod = last[1] if last is not None and last[1] in building else building[0]
        found = last[2] if last is not None and last[1] == pod else None
        try:
            log = await self.cluster.container_log(namespace, pod, MODEL_BUILDER, PROGRESS_LOG_LINES)
            report = latest_report(log)
            if report is not None:
                found = BuilderReport(pod, report)
        except KubeError as exc:
            # Progress is a courtesy: an unreadable log (no kubelet answering, a restarting container)
            # keeps the last report and the build's own status.
            logger.debug("cannot read the builder's log in %s/%s: %s", namespace, pod, exc)
        self._last[uid] = (now, pod, found)
        return found
