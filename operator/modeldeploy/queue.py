"""Serialising, merging and pacing reconciliation requests.

Many triggers fire for one object in bursts (a rollout updates the Deployment's status a dozen times;
applying 500 ModelDeployments at once fires thousands of watch events). Three rules keep that cheap:

* Reconciliations of one ModelDeployment never overlap, and requests that pile up before a run *starts*
  merge into that one run, which reads the freshest copy of the object when it starts.
* At most `concurrency` reconciliations run at once, whatever the number of objects. A run waiting for a
  free place is still "not started", so the longer the burst, the more requests each run absorbs; and
  each run's objects (live children, parsed responses) are alive only while it runs.
* `notify()` never waits: watch-event handlers hand the owner over and return, so kopf's per-object event
  queues drain at once instead of piling up full object bodies behind slow reconciliations.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modeldeploy.kube import KubeError
from modeldeploy.metrics import Metrics
from modeldeploy.reconcile import Outcome

logger = logging.getLogger(__name__)

# After an API error that retrying soon may cure (KubeError.transient: conflicts, throttling, timeouts).
TRANSIENT_RETRY_SECONDS = 10.0
# After a crash or an API error that will not go away by itself (a bug, a 403 on a read): retry, slowly.
ERROR_RETRY_SECONDS = 60.0
# Reconciliations in flight at once. Each is a short chain of API requests; a few in flight keep the API
# server busy, more only queue up inside the HTTP client and the API server (holding memory meanwhile).
DEFAULT_CONCURRENCY = 8

Reconcile = Callable[[Mapping[str, Any]], Awaitable[Outcome]]
Latest = Callable[[str], Mapping[str, Any] | None]


@dataclass
class _Slot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The run that has not started yet: every request until it starts joins it.
    queued: asyncio.Future[Outcome | None] | None = None
    retry: asyncio.Task[None] | None = None
    # metadata.generation of the object the last successful run reconciled.
    generation: int | None = None


class ReconcileQueue:
    def __init__(
        self,
        reconcile: Reconcile,
        latest: Latest,
        metrics: Metrics,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self._reconcile = reconcile
        self._latest = latest
        self._metrics = metrics
        self._slots: dict[str, _Slot] = {}
        self._limit = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    async def request(self, uid: str, trigger: str) -> Outcome | None:
        """Reconcile the ModelDeployment `uid` and wait for the outcome (None if it is gone).

        Failures raise (transient API errors as KubeError) and, as with `notify()`, are retried."""
        return await asyncio.shield(self._enqueue(uid, trigger))

    def notify(self, uid: str, trigger: str) -> None:
        """Reconcile `uid` soon, without waiting; failures are logged and retried."""
        self._enqueue(uid, trigger)

    def notify_if_changed(self, uid: str, generation: int | None, trigger: str) -> None:
        """`notify()`, unless the last successful run already saw this generation of the object (and
        nothing else is pending): a ModelDeployment's own events are mostly our status writes."""
        slot = self._slots.get(uid)
        if slot is not None and slot.generation == generation and generation is not None:
            return
        self.notify(uid, trigger)

    def _enqueue(self, uid: str, trigger: str) -> asyncio.Future[Outcome | None]:
        slot = self._slots.setdefault(uid, _Slot())
        if slot.queued is not None:
            # A run is already waiting to start; it will see everything this request would have.
            return slot.queued
        queued: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        slot.queued = queued
        task = asyncio.get_running_loop().create_task(self._drive(uid, slot, queued, trigger))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return queued

    async def _drive(
        self, uid: str, slot: _Slot, queued: asyncio.Future[Outcome | None], trigger: str
    ) -> None:
        async with slot.lock, self._limit:
            if slot.queued is queued:
                slot.queued = None
            try:
                outcome = await self._run(uid, slot, trigger)
            except asyncio.CancelledError:
                queued.cancel()
                raise
            except Exception as exc:
                queued.set_exception(exc)
                # Retrieved here so that requesters that went away don't leave it unobserved.
                queued.exception()
                if uid in self._slots:
                    transient = isinstance(exc, KubeError) and exc.transient
                    self._schedule_retry(
                        uid, slot, TRANSIENT_RETRY_SECONDS if transient else ERROR_RETRY_SECONDS
                    )
                return
            queued.set_result(outcome)
            if outcome is not None and outcome.retry_after is not None and uid in self._slots:
                # Something was refused or is still settling, and no watch event will say when it is
                # worth another look (whoever asked for this run, the retry is ours to schedule).
                self._schedule_retry(uid, slot, outcome.retry_after)

    async def _run(self, uid: str, slot: _Slot, trigger: str) -> Outcome | None:
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
        slot.generation = (body.get("metadata") or {}).get("generation")
        result = "invalid" if outcome.invalid_spec else ("ready" if outcome.ready else "progressing")
        self._metrics.reconciles.labels(trigger=trigger, result=result).inc()
        if outcome.writes:
            logger.info(
                "reconciled %s (%s): %d writes; %s", _describe(body), trigger, outcome.writes, outcome.message
            )
        return outcome

    def _schedule_retry(self, uid: str, slot: _Slot, delay: float) -> None:
        if slot.retry is not None and not slot.retry.done():
            return

        async def retry() -> None:
            await asyncio.sleep(delay)
            slot.retry = None  # so that a failure of this very attempt schedules the next one
            self.notify(uid, "retry")

        slot.retry = asyncio.get_running_loop().create_task(retry())

    def forget(self, uid: str) -> None:
        slot = self._slots.pop(uid, None)
        if slot is not None and slot.retry is not None:
            slot.retry.cancel()

    def cancel_all(self) -> None:
        for uid in list(self._slots):
            self.forget(uid)
        for task in list(self._tasks):
            task.cancel()


def _describe(body: Mapping[str, Any]) -> str:
    metadata = body.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"
