"""The canary step machine and its verdicts: pure functions of the spec, what the cluster shows and the
previous `status.rollout`.

The rollout's whole state is `status.rollout` (and the children themselves), never the operator's memory:
an operator restarted mid-rollout reads the status back and resumes at the same step. One round of the
reconciler asks `analysis_due()`, queries Prometheus if so (`prometheus.py`), then calls `advance()`,
which says what the stable Deployment serves (its live template pinned, or the spec's), how many canary
pods there should be, the next `status.rollout`, the Events to post, and when to look again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from modeldeploy.api import (
    QUEUE_TIME_FLOOR_US,
    AnalysisOutcome,
    AnalysisStatus,
    Canary,
    CanaryAnalysis,
    RevisionMetrics,
    RolloutPhase,
    RolloutStatus,
    TrafficSplit,
)

# Event reasons.
CANARY_STARTED = "CanaryStarted"
CANARY_RESTARTED = "CanaryRestarted"
CANARY_STEP_PASSED = "CanaryStepPassed"
CANARY_PROMOTING = "CanaryPromoting"
CANARY_PROMOTED = "CanaryPromoted"
CANARY_FAILED = "CanaryFailed"
CANARY_ABORTED = "CanaryAborted"
IN_PROGRESS = (RolloutPhase.PROGRESSING, RolloutPhase.PROMOTING)


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_of(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


# ------------------------------------------------------------------------------------------ verdicts


@dataclass(frozen=True)
class Judgement:
    outcome: AnalysisOutcome
    message: str


def judge(analysis: CanaryAnalysis, canary: RevisionMetrics, stable: RevisionMetrics) -> Judgement:
    """The canary against the stable revision over one interval. Failed names the metric, its value and
    the threshold; Inconclusive when either revision served fewer than minRequests."""
    for who, metrics in (("canary", canary), ("stable revision", stable)):
        if metrics.requests < analysis.min_requests:
            return Judgement(
                AnalysisOutcome.INCONCLUSIVE,
                f"the {who} served {metrics.requests:.0f} requests in the interval; "
                f"{analysis.min_requests} needed (minRequests)",
            )
    failures: list[str] = []
    canary_errors = canary.error_ratio or 0.0
    stable_errors = stable.error_ratio or 0.0
    if canary_errors > analysis.max_error_ratio:
        failures.append(f"error ratio {canary_errors:.4f} > maxErrorRatio {analysis.max_error_ratio}")
    elif canary_errors - stable_errors > analysis.max_error_ratio:
        failures.append(
            f"error ratio {canary_errors:.4f} exceeds the stable revision's {stable_errors:.4f} by more "
            f"than maxErrorRatio {analysis.max_error_ratio}"
        )
    latency = _ratio(canary.mean_latency_us, stable.mean_latency_us)
    if latency is not None and latency > analysis.max_latency_ratio:
        failures.append(
            f"latency ratio {latency:.2f} (mean {canary.mean_latency_us:.0f} µs vs "
            f"{stable.mean_latency_us:.0f} µs) > maxLatencyRatio {analysis.max_latency_ratio}"
        )
    if (canary.mean_queue_us or 0.0) >= QUEUE_TIME_FLOOR_US:
        queue = _ratio(canary.mean_queue_us, stable.mean_queue_us)
        if queue is not None and queue > analysis.max_queue_time_ratio:
            failures.append(
                f"queue time ratio {queue:.2f} (mean {canary.mean_queue_us:.0f} µs vs "
                f"{stable.mean_queue_us:.0f} µs) > maxQueueTimeRatio {analysis.max_queue_time_ratio}"
            )
    if failures:
        return Judgement(AnalysisOutcome.FAILED, "; ".join(failures))
    return Judgement(
        AnalysisOutcome.PASSED,
        f"error ratio {canary_errors:.4f}, latency ratio {_shown(latency)}, over "
        f"{canary.requests:.0f} canary and {stable.requests:.0f} stable requests",
    )


def _ratio(canary: float | None, stable: float | None) -> float | None:
    if canary is None:
        return None
    if not stable:
        # The stable revision measured nothing to compare with (no successful request): only a canary
        # that is itself unmeasurable passes.
        return math.inf if canary > 0 else None
    return canary / stable


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


# ------------------------------------------------------------------------------------------ shares


def canary_replicas(stable_replicas: int, weight: int, traffic: TrafficSplit) -> int:
    """Canary pods for a step. Replicas: added beside the stable pods so that canary/(stable+canary) is at
    least `weight`% (the Service spreads requests evenly over ready pods). HTTPRoute: enough pods for
    `weight`% of the stable pods' load. None while the stable revision itself is scaled to zero."""
    if stable_replicas <= 0:
        return 0
    if traffic is TrafficSplit.HTTP_ROUTE:
        return max(1, math.ceil(stable_replicas * weight / 100))
    return max(1, math.ceil(stable_replicas * weight / (100 - weight)))


# ------------------------------------------------------------------------------------------ machine


@dataclass(frozen=True)
class Seen:
    """What the reconciler saw of the cluster this round."""

    desired_digest: str
    # The repository the stable Deployment's template serves; None when there is no stable Deployment.
    stable_digest: str | None
    # The stable Deployment has every replica on its current template, ready.
    stable_rolled_out: bool
    # The canary Deployment serves `canary_digest` with the step's replicas ready.
    canary_ready: bool
    # Why the canary's pods cannot come up (its Deployment's ProgressDeadlineExceeded), if so.
    canary_stalled: str | None
    now: float


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    state: RolloutStatus | None
    # True: keep the stable Deployment's live template (only its replicas follow the spec).
    pin_stable: bool
    # The canary's share in percent; None: no canary Deployment.
    canary_weight: int | None
    events: list[Event] = field(default_factory=list)
    # Seconds until the machine wants to look again (a hold ends, an analysis is due); None: on events.
    retry_after: float | None = None


def analysis_due(previous: RolloutStatus | None, canary: Canary, now: float) -> bool:
    """Whether this round should query Prometheus: a step is running and an interval has passed since it
    started or since the latest analysis."""
    if previous is None or previous.phase is not RolloutPhase.PROGRESSING or previous.step_started_at is None:
        return False
    since = epoch_of(previous.step_started_at)
    if previous.last_analysis is not None:
        since = max(since, epoch_of(previous.last_analysis.time))
    return now - since >= canary.analysis.interval_seconds


def _summary(state: RolloutStatus) -> str:
    if state.phase is RolloutPhase.PROGRESSING:
        return f"step {state.step}/{state.steps} ({state.weight}%)"
    return str(state.phase.value)


def _with_summary(state: RolloutStatus) -> RolloutStatus:
    return state.model_copy(update={"summary": _summary(state)})


def _start(canary: Canary, seen: Seen, restarted_from: str | None) -> Decision:
    first = canary.steps[0]
    state = RolloutStatus(
        phase=RolloutPhase.PROGRESSING,
        stable_digest=seen.stable_digest,
        canary_digest=seen.desired_digest,
        step=1,
        steps=len(canary.steps),
        weight=first.weight,
        message=f"starting the canary of repository {seen.desired_digest} at {first.weight}%",
    )
    if restarted_from is None:
        event = Event("Normal", CANARY_STARTED, f"canary of repository {seen.desired_digest} started")
    else:
        event = Event(
            "Normal",
            CANARY_RESTARTED,
            f"the spec changed during the canary of {restarted_from}: canary of repository "
            f"{seen.desired_digest} restarted at step 1",
        )
    return Decision(_with_summary(state), pin_stable=True, canary_weight=first.weight, events=[event])


def _abort(previous: RolloutStatus, why: str) -> Decision:
    state = previous.model_copy(
        update={"phase": RolloutPhase.ABORTED, "step_started_at": None, "message": f"aborted: {why}"}
    )
    return Decision(
        _with_summary(state),
        pin_stable=False,
        canary_weight=None,
        events=[Event("Normal", CANARY_ABORTED, f"canary of {previous.canary_digest} aborted: {why}")],
    )


def _roll_back(previous: RolloutStatus, why: str, analysis: AnalysisStatus | None) -> Decision:
    message = f"rolled back to {previous.stable_digest}: {why}"
    state = previous.model_copy(
        update={
            "phase": RolloutPhase.ROLLED_BACK,
            "failed_digest": previous.canary_digest,
            "step_started_at": None,
            "last_analysis": analysis or previous.last_analysis,
            "message": message[:1024],
        }
    )
    event = Event(
        "Warning",
        CANARY_FAILED,
        f"canary of {previous.canary_digest} failed at step {previous.step}/{previous.steps} "
        f"({previous.weight}%): {why}; rolled back to {previous.stable_digest}",
    )
    return Decision(_with_summary(state), pin_stable=True, canary_weight=None, events=[event])


def advance(
    canary: Canary | None,
    previous: RolloutStatus | None,
    seen: Seen,
    analysis: tuple[RevisionMetrics, RevisionMetrics] | None = None,
    analysis_error: str | None = None,
) -> Decision:
    """The next state. `analysis`: (canary, stable) metrics when `analysis_due()` said so this round;
    `analysis_error`: why they could not be read then (recorded as an Inconclusive analysis)."""
    in_progress = previous is not None and previous.phase in IN_PROGRESS
    if canary is None:
        if previous is not None and in_progress:
            return _abort(previous, "spec.rollout no longer asks for a canary")
        return Decision(None, pin_stable=False, canary_weight=None)
    if seen.stable_digest is None:
        # Nothing serves yet: the first revision goes straight to the stable Deployment.
        return Decision(None, pin_stable=False, canary_weight=None)
    if previous is None or not in_progress:
        rolled_back = previous is not None and previous.phase is RolloutPhase.ROLLED_BACK
        if rolled_back and previous is not None and seen.desired_digest == previous.failed_digest:
            # The spec still asks for the revision that failed: it stays off, the stable one serves.
            return Decision(previous, pin_stable=True, canary_weight=None)
        if seen.desired_digest == seen.stable_digest:
            keep = (
                previous if previous is not None and previous.phase is not RolloutPhase.ROLLED_BACK else None
            )
            return Decision(keep, pin_stable=False, canary_weight=None)
        return _start(canary, seen, restarted_from=None)
    assert previous is not None
    if previous.phase is RolloutPhase.PROMOTING:
        return _promoting(canary, previous, seen)
    if seen.desired_digest == seen.stable_digest:
        return _abort(previous, "the spec is back at the stable revision")
    if seen.desired_digest != previous.canary_digest:
        return _start(canary, seen, restarted_from=previous.canary_digest)
    return _progressing(canary, previous, seen, analysis, analysis_error)


def _promoting(canary: Canary, previous: RolloutStatus, seen: Seen) -> Decision:
    if seen.desired_digest != previous.canary_digest:
        # A new spec while the stable Deployment takes the promoted revision: judge the new one against it.
        return _start(canary, seen, restarted_from=previous.canary_digest)
    if seen.stable_digest == previous.canary_digest and seen.stable_rolled_out:
        state = previous.model_copy(
            update={
                "phase": RolloutPhase.SUCCEEDED,
                "stable_digest": previous.canary_digest,
                "message": f"repository {previous.canary_digest} promoted",
            }
        )
        event = Event("Normal", CANARY_PROMOTED, f"repository {previous.canary_digest} promoted to stable")
        return Decision(_with_summary(state), pin_stable=False, canary_weight=None, events=[event])
    # The canary keeps its share until every stable pod serves the promoted revision.
    return Decision(previous, pin_stable=False, canary_weight=previous.weight)


def _progressing(
    canary: Canary,
    previous: RolloutStatus,
    seen: Seen,
    analysis: tuple[RevisionMetrics, RevisionMetrics] | None,
    analysis_error: str | None,
) -> Decision:
    steps = canary.steps
    index = min(previous.step, len(steps)) - 1
    step = steps[index]
    state = previous.model_copy(update={"steps": len(steps), "weight": step.weight})
    if seen.canary_stalled:
        return _roll_back(state, f"the canary's pods cannot come up: {seen.canary_stalled}", None)
    if not seen.canary_ready:
        waiting = state.model_copy(
            update={"message": f"step {state.step}/{state.steps}: waiting for the canary's pods to be ready"}
        )
        return Decision(_with_summary(waiting), pin_stable=True, canary_weight=step.weight)
    if state.step_started_at is None:
        state = state.model_copy(
            update={
                "step_started_at": rfc3339(seen.now),
                "last_analysis": None,
                "message": f"step {state.step}/{state.steps}: {step.weight}% of the traffic on the canary",
            }
        )
        return Decision(
            _with_summary(state),
            pin_stable=True,
            canary_weight=step.weight,
            retry_after=float(canary.analysis.interval_seconds),
        )
    if analysis is not None:
        judgement = judge(canary.analysis, *analysis)
        record = AnalysisStatus(
            time=rfc3339(seen.now),
            outcome=judgement.outcome,
            message=judgement.message[:1024],
            canary=analysis[0],
            stable=analysis[1],
        )
        if judgement.outcome is AnalysisOutcome.FAILED:
            return _roll_back(state, judgement.message, record)
        state = state.model_copy(update={"last_analysis": record})
    elif analysis_error is not None:
        record = AnalysisStatus(
            time=rfc3339(seen.now), outcome=AnalysisOutcome.INCONCLUSIVE, message=analysis_error[:1024]
        )
        state = state.model_copy(update={"last_analysis": record})
    started = epoch_of(state.step_started_at or rfc3339(seen.now))
    held = seen.now - started >= step.hold_seconds
    passed = (
        state.last_analysis is not None
        and state.last_analysis.outcome is AnalysisOutcome.PASSED
        and epoch_of(state.last_analysis.time) >= started
    )
    if held and passed:
        if state.step < len(steps):
            following = steps[state.step]
            event = Event(
                "Normal",
                CANARY_STEP_PASSED,
                f"step {state.step}/{len(steps)} ({step.weight}%) passed; canary at {following.weight}%",
            )
            state = state.model_copy(
                update={
                    "step": state.step + 1,
                    "weight": following.weight,
                    "step_started_at": None,
                    "message": (
                        f"step {state.step + 1}/{len(steps)}: scaling the canary to {following.weight}%"
                    ),
                }
            )
            return Decision(
                _with_summary(state), pin_stable=True, canary_weight=following.weight, events=[event]
            )
        state = state.model_copy(
            update={
                "phase": RolloutPhase.PROMOTING,
                "message": f"every step passed; the stable Deployment takes repository {state.canary_digest}",
            }
        )
        event = Event("Normal", CANARY_PROMOTING, f"canary of {state.canary_digest} passed every step")
        return Decision(_with_summary(state), pin_stable=False, canary_weight=step.weight, events=[event])
    since = started
    if state.last_analysis is not None:
        since = max(since, epoch_of(state.last_analysis.time))
    waits = [since + canary.analysis.interval_seconds - seen.now]
    if not held:
        waits.append(started + step.hold_seconds - seen.now)
    message = f"step {state.step}/{state.steps}: {step.weight}% of the traffic on the canary"
    if state.last_analysis is not None:
        message += f"; last analysis {state.last_analysis.outcome.value}: {state.last_analysis.message}"
    state = state.model_copy(update={"message": message[:1024]})
    return Decision(
        _with_summary(state), pin_stable=True, canary_weight=step.weight, retry_after=max(1.0, min(waits))
    )
