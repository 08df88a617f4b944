"""The Reconciler driven directly (no kopf, no operator process) against the local control plane, as its
admin: what tests of a single reconcile pass on a real API server share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig

from modeldeploy.kube import LightkubeCluster
from modeldeploy.reconcile import Reconciler
from modeldeploy.settings import FIELD_MANAGER, RenderSettings
from modeldeploy_dev.devcluster import DevCluster

T = TypeVar("T")


class DirectReconciler:
    """A Reconciler over a lightkube client as the cluster's admin, on an event loop of its own."""

    def __init__(
        self, cluster: DevCluster, settings: RenderSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cluster = cluster
        self.loop = asyncio.new_event_loop()
        client = AsyncClient(config=KubeConfig.from_file(cluster.kubeconfig), field_manager=FIELD_MANAGER)
        self.api = LightkubeCluster(client)
        self.reconciler = Reconciler(self.api, settings, clock=clock)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(work)

    def close(self) -> None:
        self.run(self.api.close())
        self.loop.close()
