"""The per-ModelDeployment queue: runs never overlap, piled-up requests merge into one follow-up run that
reads the freshest object, and transient failures are retried. Pure asyncio: the reconcile function here
is a stand-in that records calls (no Kubernetes involved)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from modeldeploy import queue as queue_module
from modeldeploy.kube import KubeError
from modeldeploy.metrics import Metrics
from modeldeploy.queue import ReconcileQueue
from modeldeploy.reconcile import Outcome


class Recorder:
    def __init__(self) -> None:
        self.bodies: dict[str, dict[str, Any]] = {"a": {"metadata": {"name": "a", "resourceVersion": "1"}}}
        self.seen: list[str] = []
        self.running = 0
        self.max_running = 0
        self.gate = asyncio.Event()
        self.fail_next: list[Exception] = []

    def latest(self, uid: str) -> Mapping[str, Any] | None:
        return self.bodies.get(uid)

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            self.seen.append(body["metadata"]["resourceVersion"])
            await self.gate.wait()
            if self.fail_next:
                raise self.fail_next.pop(0)
            return Outcome(message=body["metadata"]["resourceVersion"])
        finally:
            self.running -= 1


def _failing_queue(
    monkeypatch: pytest.MonkeyPatch,
    reconciler: Recorder | Gated,
    failures: list[Exception],
    metrics: Metrics | None = None,
    error_retry: float | None = None,
) -> ReconcileQueue:
    """A queue over `reconciler`, whose next runs raise `failures` in order; retries shortened to fit."""
    monkeypatch.setattr(queue_module, "TRANSIENT_RETRY_SECONDS", 0.01)
    if error_retry is not None:
        monkeypatch.setattr(queue_module, "ERROR_RETRY_SECONDS", error_retry)
    reconciler.fail_next = list(failures)
    return ReconcileQueue(reconciler.reconcile, reconciler.latest, metrics or Metrics())


def test_requests_pile_up_into_one_run_with_the_latest_object() -> None:
    asyncio.run(_requests_pile_up_into_one_run_with_the_latest_object())


async def _requests_pile_up_into_one_run_with_the_latest_object() -> None:
    recorder = Recorder()
    queue = ReconcileQueue(recorder.reconcile, recorder.latest, Metrics())
    first = asyncio.create_task(queue.request("a", "create"))
    await asyncio.sleep(0.01)
    # While the first run is in flight, the object changes and ten more events arrive.
    recorder.bodies["a"]["metadata"]["resourceVersion"] = "2"
    followers = [asyncio.create_task(queue.request("a", "deployments")) for _ in range(10)]
    await asyncio.sleep(0.01)
    recorder.gate.set()
    outcomes = await asyncio.gather(first, *followers)
    assert recorder.seen == ["1", "2"], "one run for the first request, one merged run for the rest"
    assert recorder.max_running == 1
    assert {o.message for o in outcomes[1:] if o} == {"2"}


def test_a_gone_object_is_not_reconciled() -> None:
    asyncio.run(_a_gone_object_is_not_reconciled())


async def _a_gone_object_is_not_reconciled() -> None:
    recorder = Recorder()
    recorder.gate.set()
    queue = ReconcileQueue(recorder.reconcile, recorder.latest, Metrics())
    assert await queue.request("missing", "resync") is None
    assert recorder.seen == []


def test_transient_failures_raise_and_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(_transient_failures_raise_and_are_retried(monkeypatch))


async def _transient_failures_raise_and_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    recorder.gate.set()
    metrics = Metrics()
    queue = _failing_queue(
        monkeypatch, recorder, [KubeError("apply Deployment: 503", 503, True)] * 2, metrics
    )
    with pytest.raises(KubeError):
        await queue.request("a", "deployments")
    for _ in range(100):
        if len(recorder.seen) >= 3:
            break
        await asyncio.sleep(0.01)
    assert len(recorder.seen) == 3, "two failures, each followed by a scheduled retry, then success"
    assert metrics.reconcile_errors.labels(error="transient")._value.get() == 2
    queue.cancel_all()


def test_a_failed_run_that_requests_joined_fails_each_and_is_retried_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asyncio.run(_a_failed_run_that_requests_joined_fails_each_and_is_retried_once(monkeypatch))


async def _a_failed_run_that_requests_joined_fails_each_and_is_retried_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder()
    queue = _failing_queue(monkeypatch, recorder, [KubeError("timeout", None, True)])
    # Five requests before the run starts (the resync's and a handler's, say): one run, one failure.
    requests = [asyncio.create_task(queue.request("a", "resync")) for _ in range(5)]
    await asyncio.sleep(0)
    recorder.gate.set()
    results = await asyncio.gather(*requests, return_exceptions=True)
    assert all(isinstance(result, KubeError) for result in results), results
    await asyncio.sleep(0.1)
    assert len(recorder.seen) == 2, "the failed run, then exactly one retry"
    queue.cancel_all()


class Gated:
    """A reconcile function whose runs each wait for their own release."""

    def __init__(self) -> None:
        self.bodies: dict[str, dict[str, Any]] = {}
        self.started: list[str] = []
        self.running = 0
        self.max_running = 0
        self.release = asyncio.Event()
        self.fail_next: list[Exception] = []

    def add(self, uid: str, generation: int = 1) -> None:
        self.bodies[uid] = {"metadata": {"uid": uid, "name": uid, "generation": generation}}

    def latest(self, uid: str) -> Mapping[str, Any] | None:
        return self.bodies.get(uid)

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        self.started.append(body["metadata"]["uid"])
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.release.wait()
            if self.fail_next:
                raise self.fail_next.pop(0)
            return Outcome()
        finally:
            self.running -= 1


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def test_at_most_concurrency_runs_at_once_and_waiting_runs_absorb_requests() -> None:
    asyncio.run(_at_most_concurrency_runs_at_once_and_waiting_runs_absorb_requests())


async def _at_most_concurrency_runs_at_once_and_waiting_runs_absorb_requests() -> None:
    gated = Gated()
    for i in range(10):
        gated.add(f"md-{i}")
    queue = ReconcileQueue(gated.reconcile, gated.latest, Metrics(), concurrency=3)
    # A burst: every object asked for (its children's events), none of it waited for ...
    for i in range(10):
        queue.notify(f"md-{i}", "deployments")
    await settle()
    assert gated.max_running == 3 and len(gated.started) == 3
    # ... and four more times while three run and seven wait for a place.
    for _ in range(4):
        for i in range(10):
            queue.notify(f"md-{i}", "pods")
    await settle()
    gated.release.set()
    for _ in range(100):
        if len(gated.started) == 10 and gated.running == 0:
            break
        await asyncio.sleep(0.01)
    await settle()
    # The three that had started when the burst went on run once more; the seven that waited for a
    # place absorbed all five requests each.
    assert sorted(gated.started) == sorted([f"md-{i}" for i in range(10)] + ["md-0", "md-1", "md-2"])
    assert gated.max_running == 3


def test_notify_if_changed_skips_a_generation_already_reconciled() -> None:
    asyncio.run(_notify_if_changed_skips_a_generation_already_reconciled())


async def _notify_if_changed_skips_a_generation_already_reconciled() -> None:
    gated = Gated()
    gated.release.set()
    gated.add("a", generation=1)
    queue = ReconcileQueue(gated.reconcile, gated.latest, Metrics())
    queue.notify_if_changed("a", 1, "create")
    await settle()
    assert gated.started == ["a"]
    queue.notify_if_changed("a", 1, "update")  # our own status write: same generation
    await settle()
    assert gated.started == ["a"]
    gated.add("a", generation=2)  # a spec change
    queue.notify_if_changed("a", 2, "update")
    await settle()
    assert gated.started == ["a", "a"]
    queue.forget("a")  # deleted: a new object of that uid would be reconciled again
    queue.notify_if_changed("a", 2, "resume")
    await settle()
    assert gated.started == ["a", "a", "a"]


# (seconds to wait, runs started by then, why)
Timeline = list[tuple[float, int, str]]


@pytest.mark.parametrize(
    ("failures", "error_retry", "timeline"),
    [
        pytest.param(
            [KubeError("timeout", None, True), RuntimeError("a bug")],
            0.05,
            [
                (0.03, 2, "the transient failure is retried soon"),
                (0.02, 2, "the crash waits longer"),
                (0.1, 3, "the crash is retried"),
            ],
            id="notified failures are retried, crashes more slowly",
        ),
        pytest.param(
            # A 403 (KubeError.transient is False): retrying in 10 s would not help.
            [KubeError("list nodes: forbidden", 403, False)],
            0.08,
            [(0.04, 1, "not retried on the transient schedule"), (0.1, 2, "retried like a crash")],
            id="a permanent API error is retried slowly like a crash",
        ),
    ],
)
def test_notified_failures_are_retried_on_their_schedule(
    monkeypatch: pytest.MonkeyPatch, failures: list[Exception], error_retry: float, timeline: Timeline
) -> None:
    asyncio.run(
        _notified_failures_are_retried_on_their_schedule(monkeypatch, failures, error_retry, timeline)
    )


async def _notified_failures_are_retried_on_their_schedule(
    monkeypatch: pytest.MonkeyPatch, failures: list[Exception], error_retry: float, timeline: Timeline
) -> None:
    gated = Gated()
    gated.release.set()
    gated.add("a")
    queue = _failing_queue(monkeypatch, gated, failures, error_retry=error_retry)
    queue.notify("a", "pods")
    for pause, started, why in timeline:
        await asyncio.sleep(pause)
        assert len(gated.started) == started, why
    queue.cancel_all()


class Settling(Gated):
    """Succeeds, asking to be looked at again after `retry_after` (a refused child) `times` times."""

    def __init__(self, retry_after: float, times: int) -> None:
        super().__init__()
        self.retry_after = retry_after
        self.times = times

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        await super().reconcile(body)
        self.times -= 1
        return Outcome(retry_after=self.retry_after if self.times >= 0 else None)


def test_outcome_retry_after_schedules_the_next_run() -> None:
    asyncio.run(_outcome_retry_after_schedules_the_next_run())


async def _outcome_retry_after_schedules_the_next_run() -> None:
    settling = Settling(retry_after=0.05, times=2)
    settling.release.set()
    settling.add("a")
    queue = ReconcileQueue(settling.reconcile, settling.latest, Metrics())
    # A trigger that nobody retries (the spec's generation was already seen) still gets its follow-up.
    await queue.request("a", "create")
    assert len(settling.started) == 1
    await asyncio.sleep(0.02)
    assert len(settling.started) == 1, "not before retry_after"
    await asyncio.sleep(0.06)
    assert len(settling.started) == 2
    await asyncio.sleep(0.08)
    assert len(settling.started) == 3
    await asyncio.sleep(0.15)
    assert len(settling.started) == 3, "no retry once the outcome asks for none"
    queue.cancel_all()
