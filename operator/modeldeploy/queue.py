"""Serialising and merging reconciliation requests, per ModelDeployment.

Many triggers fire for one object in bursts (a rollout updates the Deployment's status a dozen times).
Reconciliations of one ModelDeployment never overlap, and requests that pile up while one runs merge into
a single follow-up run, which reads the freshest copy of the object when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modeldeploy.kube import KubeError
from modeldeploy.metrics import Metrics
from modeldeploy.reconcile import Outcome

logger = logging.getLogger(__name__)

TRANSIENT_RETRY_SECONDS = 10.0

Reconcile = Callable[[Mapping[str, Any]], Awaitable[Outcome]]
Latest = Callable[[str], Mapping[str, Any] | None]


@dataclass
class _Slot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: asyncio.Future[Outcome | None] | None = None
    retry: asyncio.Task[None] | None = None


class ReconcileQueue:
    def __init__(self, reconcile: Reconcile, latest: Latest, metrics: Metrics) -> None:
        self._reconcile = reconcile
        self._latest = latest
        self._metrics = metrics
        self._slots: dict[str, _Slot] = {}

    async def request(self, uid: str, trigger: str, retry_transient: bool = True) -> Outcome | None:
        """Reconcile the ModelDeployment `uid` (None if it is gone). Transient API errors raise KubeError;
        with `retry_transient` a retry is also scheduled, for triggers nobody else retries."""
        slot = self._slots.setdefault(uid, _Slot())
        if slot.queued is not None:
            # A run is already waiting to start; it will see everything this request would have.
            return await asyncio.shield(slot.queued)
        queued: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        slot.queued = queued
        async with slot.lock:
            slot.queued = None
            try:
                outcome = await self._run(uid, trigger)
            except asyncio.CancelledError:
                queued.cancel()
                raise
            except BaseException as exc:
                queued.set_exception(exc)
                # Retrieved here so that merged waiters that went away don't leave it unobserved.
                queued.exception()
                if isinstance(exc, KubeError) and retry_transient:
                    self._schedule_retry(uid, slot)
                raise
            queued.set_result(outcome)
            return outcome

    async def _run(self, uid: str, trigger: str) -> Outcome | None:
        body = self._latest(uid)
        if body is None:
            self._slots.pop(uid, None)
            return None
        started = time.perf_counter()
        try:
            outcome = await self._reconcile(body)
        except KubeError as exc:
            self._metrics.reconciles.labels(trigger=trigger, result="error").inc()
            self._metrics.reconcile_errors.labels(error="transient" if exc.transient else "api").inc()
            logger.warning("reconciling %s failed (%s): %s", _describe(body), trigger, exc)
            raise
        except Exception:
            self._metrics.reconciles.labels(trigger=trigger, result="error").inc()
            self._metrics.reconcile_errors.labels(error="bug").inc()
            logger.exception("reconciling %s crashed (%s)", _describe(body), trigger)
            raise
        finally:
            self._metrics.reconcile_duration.observe(time.perf_counter() - started)
        result = "invalid" if outcome.invalid_spec else ("ready" if outcome.ready else "progressing")
        self._metrics.reconciles.labels(trigger=trigger, result=result).inc()
        if outcome.writes:
            logger.info(
                "reconciled %s (%s): %d writes; %s", _describe(body), trigger, outcome.writes, outcome.message
            )
        return outcome

    def _schedule_retry(self, uid: str, slot: _Slot) -> None:
        if slot.retry is not None and not slot.retry.done():
            return

        async def retry() -> None:
            await asyncio.sleep(TRANSIENT_RETRY_SECONDS)
            slot.retry = None  # so that a failure of this very attempt schedules the next one
            with contextlib.suppress(Exception):  # logged by _run
                await self.request(uid, "retry")

        slot.retry = asyncio.get_running_loop().create_task(retry())

    def forget(self, uid: str) -> None:
        slot = self._slots.pop(uid, None)
        if slot is not None and slot.retry is not None:
            slot.retry.cancel()

    def cancel_all(self) -> None:
        for uid in list(self._slots):
            self.forget(uid)


def _describe(body: Mapping[str, Any]) -> str:
    metadata = body.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"
