"""Safe rollouts (spec.rollout): the API's rules, the canary verdicts and step machine (pure), the canary
builders (validated like every builder, one golden), and the reconciler's wiring on the FakeCluster.

The FakeCluster tests feed the analysis with figures through `Figures`, a MetricsSource that returns what
a Prometheus would have answered: the fast tier has no Prometheus. The query client itself is tested
against a real Prometheus in tests/e2e/test_rollout_prometheus.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from md_fixtures import md_of

from modeldeploy.api import (
    AnalysisOutcome,
    CanaryAnalysis,
    RevisionMetrics,
    RolloutPhase,
    RolloutStatus,
    SpecError,
    parse_spec,
)
from modeldeploy.kinds import (
    DEPLOYMENT,
    HORIZONTAL_POD_AUTOSCALER,
    HTTP_ROUTE,
    HTTP_ROUTE_CRD,
    MODEL_DEPLOYMENT,
    SERVICE,
)
from modeldeploy.labels import MODEL_DIGEST_ANNOTATION
from modeldeploy.manifests import desired_state
from modeldeploy.manifests.canary import (
    CANARY_INFERENCE_SERVER,
    TRACK_LABEL,
    build_canary_deployment,
    build_canary_service,
    build_http_route,
    canary_name,
)
from modeldeploy.prometheus import RevisionSelector, revision_metrics, revision_queries
from modeldeploy.reconcile import Reconciler
from modeldeploy.rollout import (
    CANARY_FAILED,
    CANARY_PROMOTED,
    CANARY_STEP_PASSED,
    Seen,
    advance,
    analysis_due,
    canary_replicas,
    epoch_of,
    judge,
)
from modeldeploy.rollout_steps import MetricsSources
from modeldeploy.settings import ClusterCapabilities, RenderSettings
from modeldeploy_dev.fakecluster import FakeCluster

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = RenderSettings(triton_image="triton:t", builder_image="builder:t")
CANARY_SPEC: dict[str, Any] = {
    "rollout": {
        "strategy": "Canary",
        "canary": {
            "steps": [{"weight": 10, "holdSeconds": 60}, {"weight": 50, "holdSeconds": 60}],
            "analysis": {"intervalSeconds": 30, "minRequests": 20},
        },
    }
}
GOOD = RevisionMetrics(requests=100, error_ratio=0.0, mean_latency_us=10_000, mean_queue_us=100)


def _spec(**rollout: Any) -> dict[str, Any]:
    return {"model": {"source": "hf://org/m", "task": "text-classification"}, "rollout": rollout}


# ------------------------------------------------------------------------------------------ the API


def test_defaults_need_only_the_strategy() -> None:
    spec = parse_spec(_spec(strategy="Canary"))
    canary = spec.canary
    assert canary is not None
    assert [(s.weight, s.hold_seconds) for s in canary.steps] == [(10, 120), (50, 120)]
    assert canary.analysis.min_requests == 50 and canary.analysis.max_error_ratio == 0.01
    assert parse_spec(_spec(strategy="RollingUpdate")).canary is None
    assert parse_spec({"model": {"source": "hf://org/m"}}).canary is None


@pytest.mark.parametrize(
    ("rollout", "message"),
    [
        (
            {"strategy": "RollingUpdate", "canary": {}},
            "spec.rollout.canary applies only with spec.rollout.strategy Canary",
        ),
        (
            {"strategy": "Canary", "canary": {"steps": [{"weight": 50}, {"weight": 10}]}},
            "spec.rollout.canary.steps must be in order of non-decreasing weight",
        ),
        (
            {"strategy": "Canary", "canary": {"traffic": "HTTPRoute"}},
            "spec.rollout.canary.gatewayRef is required with traffic HTTPRoute, and only then",
        ),
        (
            {"strategy": "Canary", "canary": {"gatewayRef": {"name": "gw"}}},
            "spec.rollout.canary.gatewayRef is required with traffic HTTPRoute, and only then",
        ),
    ],
)
def test_rules_name_the_field(rollout: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec(**rollout))
    assert message in caught.value.messages


def test_a_weight_of_100_is_refused_by_the_schema() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec(strategy="Canary", canary={"steps": [{"weight": 100}]}))
    assert caught.value.messages[0].startswith("spec.rollout.canary.steps.0.weight")


# ------------------------------------------------------------------------------------------ verdicts

ANALYSIS = CanaryAnalysis(
    min_requests=20, max_error_ratio=0.01, max_latency_ratio=1.25, max_queue_time_ratio=2.0
)


def test_a_canary_like_the_stable_revision_passes() -> None:
    verdict = judge(ANALYSIS, GOOD, GOOD)
    assert verdict.outcome is AnalysisOutcome.PASSED


def test_too_few_requests_is_inconclusive_not_a_pass() -> None:
    verdict = judge(ANALYSIS, GOOD.model_copy(update={"requests": 19}), GOOD)
    assert verdict.outcome is AnalysisOutcome.INCONCLUSIVE
    assert "19 requests" in verdict.message and "minRequests" in verdict.message
    assert (
        judge(ANALYSIS, GOOD, GOOD.model_copy(update={"requests": 3})).outcome is AnalysisOutcome.INCONCLUSIVE
    )


def test_errors_fail_naming_metric_value_and_threshold() -> None:
    verdict = judge(ANALYSIS, GOOD.model_copy(update={"error_ratio": 0.25}), GOOD)
    assert verdict.outcome is AnalysisOutcome.FAILED
    assert verdict.message == "error ratio 0.2500 > maxErrorRatio 0.01"


def test_slower_canary_fails_on_the_latency_ratio() -> None:
    verdict = judge(ANALYSIS, GOOD.model_copy(update={"mean_latency_us": 13_000}), GOOD)
    assert verdict.outcome is AnalysisOutcome.FAILED
    assert "latency ratio 1.30" in verdict.message and "maxLatencyRatio 1.25" in verdict.message
    assert judge(ANALYSIS, GOOD.model_copy(update={"mean_latency_us": 12_000}), GOOD).outcome is (
        AnalysisOutcome.PASSED
    )


def test_queue_time_is_judged_only_above_its_floor() -> None:
    idle_but_tripled = GOOD.model_copy(update={"mean_queue_us": 300})
    assert judge(ANALYSIS, idle_but_tripled, GOOD).outcome is AnalysisOutcome.PASSED
    queued = GOOD.model_copy(update={"mean_queue_us": 5000})
    verdict = judge(ANALYSIS, queued, GOOD.model_copy(update={"mean_queue_us": 2000}))
    assert verdict.outcome is AnalysisOutcome.FAILED and "maxQueueTimeRatio 2.0" in verdict.message


@pytest.mark.parametrize(
    ("stable", "weight", "traffic", "expected"),
    [
        (9, 10, "Replicas", 1),
        (1, 10, "Replicas", 1),
        (2, 50, "Replicas", 2),
        (4, 25, "Replicas", 2),
        (10, 10, "HTTPRoute", 1),
        (10, 50, "HTTPRoute", 5),
        (0, 50, "Replicas", 0),
    ],
)
def test_canary_replicas_give_at_least_the_share(
    stable: int, weight: int, traffic: str, expected: int
) -> None:
    from modeldeploy.api import TrafficSplit

    replicas = canary_replicas(stable, weight, TrafficSplit(traffic))
    assert replicas == expected
    if traffic == "Replicas" and stable:
        assert replicas / (stable + replicas) >= weight / 100


def test_prometheus_queries_tell_the_revisions_apart_by_pod_name() -> None:
    stable = revision_queries(RevisionSelector("ml", "bert", "bert"), 60)
    canary = revision_queries(RevisionSelector("ml", "bert-canary", "bert"), 60)
    assert stable["failure"] == (
        'sum(increase(nv_inference_request_failure{namespace="ml",pod=~"bert-[a-z0-9]+-[a-z0-9]+",'
        'model="bert"}[60s]))'
    )
    assert 'pod=~"bert-canary-[a-z0-9]+-[a-z0-9]+"' in canary["success"]
    with pytest.raises(ValueError):
        RevisionSelector("ml", 'x"}', "bert").matchers()
    figures = revision_metrics({"success": 90.0, "failure": 10.0, "request_us": 900_000.0, "queue_us": None})
    assert figures == RevisionMetrics(
        requests=100, error_ratio=0.1, mean_latency_us=10_000, mean_queue_us=None
    )
    assert revision_metrics({}).requests == 0 and revision_metrics({}).error_ratio is None


# ------------------------------------------------------------------------------------------ machine

CANARY = parse_spec(_spec(**CANARY_SPEC["rollout"])).canary
assert CANARY is not None
T0 = epoch_of("2026-01-01T00:00:00Z")


def _seen(now: float, desired: str = "new", stable: str = "old", **kwargs: Any) -> Seen:
    defaults: dict[str, Any] = {"stable_rolled_out": True, "canary_ready": True, "canary_stalled": None}
    return Seen(desired_digest=desired, stable_digest=stable, now=now, **{**defaults, **kwargs})


def _through_first_step() -> RolloutStatus:
    started = advance(CANARY, None, _seen(T0, canary_ready=False))
    assert started.state is not None and started.pin_stable and started.canary_weight == 10
    running = advance(CANARY, started.state, _seen(T0 + 5))
    assert running.state is not None and running.state.step_started_at == "2026-01-01T00:00:05Z"
    return running.state


def test_a_new_repository_starts_a_canary_and_the_stable_template_stays() -> None:
    decision = advance(CANARY, None, _seen(T0, canary_ready=False))
    assert decision.state is not None
    assert decision.state.phase is RolloutPhase.PROGRESSING
    assert (decision.state.stable_digest, decision.state.canary_digest) == ("old", "new")
    assert decision.state.summary == "step 1/2 (10%)"
    assert decision.pin_stable and decision.canary_weight == 10
    assert [e.reason for e in decision.events] == ["CanaryStarted"]
    # Until the canary's pods are ready, the step has not started: no analysis is due.
    waiting = advance(CANARY, decision.state, _seen(T0 + 100, canary_ready=False))
    assert waiting.state is not None and waiting.state.step_started_at is None
    assert not analysis_due(waiting.state, CANARY, T0 + 1000)


def test_first_deployment_and_unchanged_spec_need_no_canary() -> None:
    assert advance(CANARY, None, _seen(T0, stable=None)).state is None  # type: ignore[arg-type]
    same = advance(CANARY, None, _seen(T0, desired="old"))
    assert same.state is None and not same.pin_stable and same.canary_weight is None


def test_good_canary_is_promoted_step_by_step() -> None:
    state = _through_first_step()
    assert not analysis_due(state, CANARY, T0 + 30)
    assert analysis_due(state, CANARY, T0 + 35)
    # Analysis passes but the hold (60 s) has not elapsed: stays at step 1, looks again at the next interval.
    held = advance(CANARY, state, _seen(T0 + 35), (GOOD, GOOD))
    assert held.state is not None and held.state.step == 1
    assert held.state.last_analysis is not None and held.state.last_analysis.outcome is AnalysisOutcome.PASSED
    assert held.retry_after == 30
    passed = advance(CANARY, held.state, _seen(T0 + 65), (GOOD, GOOD))
    assert passed.state is not None and passed.state.step == 2 and passed.canary_weight == 50
    assert passed.state.step_started_at is None
    assert [e.reason for e in passed.events] == [CANARY_STEP_PASSED]
    # Step 2 starts when the canary's pods at 50% are ready; then one interval, one passing analysis.
    step2 = advance(CANARY, passed.state, _seen(T0 + 70))
    assert step2.state is not None
    last = advance(CANARY, step2.state, _seen(T0 + 131), (GOOD, GOOD))
    assert last.state is not None and last.state.phase is RolloutPhase.PROMOTING
    assert not last.pin_stable and last.canary_weight == 50
    # The canary keeps serving until every stable pod serves the promoted revision.
    rolling = advance(CANARY, last.state, _seen(T0 + 140, stable="new", stable_rolled_out=False))
    assert rolling.state is last.state and rolling.canary_weight == 50
    done = advance(CANARY, last.state, _seen(T0 + 150, stable="new"))
    assert done.state is not None and done.state.phase is RolloutPhase.SUCCEEDED
    assert done.canary_weight is None and [e.reason for e in done.events] == [CANARY_PROMOTED]
    assert done.state.summary == "Succeeded"


def test_a_failed_check_rolls_back_at_once_and_keeps_the_revision_marked() -> None:
    state = _through_first_step()
    bad = GOOD.model_copy(update={"error_ratio": 0.2})
    failed = advance(CANARY, state, _seen(T0 + 35), (bad, GOOD))
    assert failed.state is not None and failed.state.phase is RolloutPhase.ROLLED_BACK
    assert failed.canary_weight is None and failed.pin_stable
    assert failed.state.failed_digest == "new"
    (event,) = failed.events
    assert event.type == "Warning" and event.reason == CANARY_FAILED
    assert (
        "error ratio 0.2000 > maxErrorRatio 0.01" in event.message and "rolled back to old" in event.message
    )
    # The spec still asks for it: not retried, the stable revision keeps serving.
    again = advance(CANARY, failed.state, _seen(T0 + 500))
    assert again.state == failed.state and again.pin_stable and again.canary_weight is None
    # Another revision starts a new canary.
    other = advance(CANARY, failed.state, _seen(T0 + 600, desired="newer"))
    assert other.state is not None and other.state.phase is RolloutPhase.PROGRESSING
    assert other.state.canary_digest == "newer"


def test_pods_that_cannot_come_up_roll_back() -> None:
    started = advance(CANARY, None, _seen(T0, canary_ready=False))
    assert started.state is not None
    stuck = advance(CANARY, started.state, _seen(T0 + 900, canary_ready=False, canary_stalled="deadline"))
    assert stuck.state is not None and stuck.state.phase is RolloutPhase.ROLLED_BACK
    assert "cannot come up: deadline" in (stuck.state.message or "")


def test_a_new_spec_during_a_canary_restarts_it() -> None:
    state = advance(CANARY, _through_first_step(), _seen(T0 + 65), (GOOD, GOOD)).state
    assert state is not None and state.step == 2
    restarted = advance(CANARY, state, _seen(T0 + 70, desired="newer", canary_ready=False))
    assert restarted.state is not None
    assert (restarted.state.step, restarted.state.canary_digest, restarted.canary_weight) == (1, "newer", 10)
    assert restarted.state.last_analysis is None
    assert [e.reason for e in restarted.events] == ["CanaryRestarted"]


def test_removing_the_canary_spec_aborts_and_the_spec_rolls_normally() -> None:
    state = _through_first_step()
    aborted = advance(None, state, _seen(T0 + 10))
    assert aborted.state is not None and aborted.state.phase is RolloutPhase.ABORTED
    assert not aborted.pin_stable and aborted.canary_weight is None
    assert [e.reason for e in aborted.events] == ["CanaryAborted"]
    back = advance(CANARY, state, _seen(T0 + 10, desired="old"))
    assert back.state is not None and back.state.phase is RolloutPhase.ABORTED


def test_prometheus_errors_are_inconclusive_and_retried() -> None:
    state = _through_first_step()
    decision = advance(CANARY, state, _seen(T0 + 35), None, "Prometheus at http://p:9090 is unreachable")
    assert decision.state is not None and decision.state.phase is RolloutPhase.PROGRESSING
    assert decision.state.last_analysis is not None
    assert decision.state.last_analysis.outcome is AnalysisOutcome.INCONCLUSIVE
    # The hold elapsed, but no analysis passed in this step: not promoted.
    later = advance(CANARY, decision.state, _seen(T0 + 66))
    assert later.state is not None and later.state.step == 1


def test_the_state_survives_a_round_trip_through_the_status() -> None:
    state = _through_first_step()
    reread = RolloutStatus.model_validate(state.dump())
    assert advance(CANARY, reread, _seen(T0 + 65), (GOOD, GOOD)) == advance(
        CANARY, state, _seen(T0 + 65), (GOOD, GOOD)
    )


# ------------------------------------------------------------------------------------------ builders


def _validate(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, "1.37.0", strict=True)


def test_canary_deployment_is_the_spec_under_its_own_selector() -> None:
    md = md_of(CANARY_SPEC, {"replicas": 3})
    assert md.spec.canary is not None
    stable = desired_state(md, SETTINGS, ClusterCapabilities()).deployment
    manifest = build_canary_deployment(md, SETTINGS, md.spec.canary, 2)
    _validate(manifest)
    assert manifest["metadata"]["name"] == "bert-canary" == canary_name("bert")
    assert manifest["spec"]["replicas"] == 2
    labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert labels[TRACK_LABEL] == "canary"
    # Traffic Replicas: behind the one Service, whose selector the canary pods match.
    assert set(stable["spec"]["selector"]["matchLabels"].items()) <= set(labels.items())
    assert manifest["spec"]["selector"]["matchLabels"] == {
        "modeldeploy.dev/name": "bert",
        TRACK_LABEL: "canary",
    }
    assert manifest["spec"]["template"]["spec"] == stable["spec"]["template"]["spec"]
    annotations = manifest["spec"]["template"]["metadata"]["annotations"]
    assert (
        annotations[MODEL_DIGEST_ANNOTATION]
        == stable["spec"]["template"]["metadata"]["annotations"][MODEL_DIGEST_ANNOTATION]
    )
    golden = GOLDEN / "canary-deployment.yaml"
    rendered = yaml.safe_dump(manifest, sort_keys=False)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert rendered == golden.read_text()


def test_http_route_traffic_keeps_canary_pods_out_of_the_one_service() -> None:
    md = md_of(
        {"rollout": {"strategy": "Canary", "canary": {"traffic": "HTTPRoute", "gatewayRef": {"name": "gw"}}}}
    )
    canary = md.spec.canary
    assert canary is not None
    service = desired_state(md, SETTINGS, ClusterCapabilities()).service
    deployment = build_canary_deployment(md, SETTINGS, canary, 1)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == CANARY_INFERENCE_SERVER
    assert not set(service["spec"]["selector"].items()) <= set(labels.items())
    canary_service = build_canary_service(md)
    _validate(canary_service)
    assert set(canary_service["spec"]["selector"].items()) <= set(labels.items())
    route = build_http_route(md, canary, 25)
    assert route["apiVersion"] == HTTP_ROUTE.api_version and route["kind"] == "HTTPRoute"
    assert route["spec"]["parentRefs"] == [{"name": "gw"}]
    backends = route["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [("bert", 75), ("bert-canary", 25)]


def test_recreate_strategy_reaches_the_deployment() -> None:
    md = md_of({"rollout": {"strategy": "Recreate"}})
    deployment = desired_state(md, SETTINGS, ClusterCapabilities()).deployment
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    _validate(deployment)
    default = desired_state(md_of(), SETTINGS, ClusterCapabilities()).deployment
    assert default["spec"]["strategy"]["type"] == "RollingUpdate"


# ------------------------------------------------------------------------------------------ reconcile

NAMESPACE = "models"


class Figures:
    """What Prometheus would answer for each revision (by Deployment name); see the module docstring."""

    def __init__(self) -> None:
        self.by_deployment: dict[str, RevisionMetrics] = {}
        self.asked: list[tuple[str, int]] = []

    async def revision(self, selector: RevisionSelector, window_seconds: int) -> RevisionMetrics:
        self.asked.append((selector.deployment, window_seconds))
        return self.by_deployment[selector.deployment]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Rollout:
    """A FakeCluster, a reconciler over it with a settable wall clock, and the Deployment controller's part
    (reporting Deployments ready) played by hand."""

    def __init__(self) -> None:
        self.cluster = FakeCluster()
        self.clock = Clock()
        self.figures = Figures()
        self.reconciler = self.new_reconciler()

    def new_reconciler(self) -> Reconciler:
        return Reconciler(
            self.cluster,
            SETTINGS,
            metrics_sources=MetricsSources(lambda url: self.figures),
            wall_clock=self.clock,
        )

    def apply(self, spec: dict[str, Any]) -> None:
        self.cluster.create_model_deployment(NAMESPACE, "bert", spec)

    def reconcile(self) -> Any:
        body = self.cluster.body(MODEL_DEPLOYMENT, NAMESPACE, "bert")
        return asyncio.run(self.reconciler.reconcile(body))

    def ready(self, name: str) -> None:
        live = self.cluster.body(DEPLOYMENT, NAMESPACE, name)
        replicas = int(live["spec"].get("replicas", 1))
        status = {
            "observedGeneration": live["metadata"].get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
        }
        self.cluster.set_status(DEPLOYMENT, NAMESPACE, name, status)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.cluster.body(MODEL_DEPLOYMENT, NAMESPACE, "bert").get("status") or {}
        return status

    def digest(self, name: str) -> str:
        live = self.cluster.body(DEPLOYMENT, NAMESPACE, name)
        return str(live["spec"]["template"]["metadata"]["annotations"][MODEL_DIGEST_ANNOTATION])

    def has(self, name: str) -> bool:
        return self.cluster.exists(DEPLOYMENT, NAMESPACE, name)


def _started_canary() -> tuple[Rollout, dict[str, Any], str]:
    """A served model whose spec then asks for another checkpoint revision under a canary."""
    rollout = Rollout()
    spec = {"model": {"source": "hf://org/m", "task": "text-classification", "revision": "v1"}, "replicas": 3}
    spec |= CANARY_SPEC
    rollout.apply(spec)
    rollout.reconcile()
    rollout.ready("bert")
    rollout.reconcile()
    assert not rollout.has("bert-canary") and "rollout" not in rollout.status()
    first = rollout.digest("bert")
    spec = {**spec, "model": {**spec["model"], "revision": "v2"}}
    rollout.apply(spec)
    outcome = rollout.reconcile()
    assert outcome.ready, outcome.message
    return rollout, spec, first


def test_reconcile_runs_a_good_canary_to_promotion() -> None:
    rollout, _, first = _started_canary()
    assert rollout.digest("bert") == first  # the stable Deployment is pinned
    canary = rollout.cluster.body(DEPLOYMENT, NAMESPACE, "bert-canary")
    assert canary["spec"]["replicas"] == 1  # 1 of 4 pods >= 10%
    second = rollout.digest("bert-canary")
    status = rollout.status()
    assert status["rollout"]["summary"] == "step 1/2 (10%)"
    assert status["modelRepository"]["digest"] == first
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True" and conditions["Canary"]["reason"] == "CanaryProgressing"
    rollout.ready("bert-canary")
    outcome = rollout.reconcile()
    assert rollout.status()["rollout"]["stepStartedAt"] == "2026-01-01T00:00:00Z"
    assert outcome.retry_after == 30
    rollout.figures.by_deployment = {"bert": GOOD, "bert-canary": GOOD}
    rollout.clock.now += 61
    rollout.reconcile()
    assert rollout.figures.asked == [("bert-canary", 30), ("bert", 30)]
    assert rollout.status()["rollout"]["summary"] == "step 2/2 (50%)"
    assert rollout.cluster.body(DEPLOYMENT, NAMESPACE, "bert-canary")["spec"]["replicas"] == 3
    rollout.ready("bert-canary")
    rollout.reconcile()
    rollout.clock.now += 61
    rollout.reconcile()
    assert rollout.status()["rollout"]["phase"] == "Promoting"
    assert rollout.digest("bert") == second and rollout.has("bert-canary")
    rollout.ready("bert")
    rollout.reconcile()
    status = rollout.status()
    assert status["rollout"]["phase"] == "Succeeded" and not rollout.has("bert-canary")
    assert status["modelRepository"]["digest"] == second
    reasons = [e["reason"] for e in rollout.cluster.events]
    assert [r for r in reasons if r.startswith("Canary")] == [
        "CanaryStarted",
        "CanaryStepPassed",
        "CanaryPromoting",
        "CanaryPromoted",
    ]


def test_reconcile_rolls_a_bad_canary_back_with_the_reason_in_status_and_events() -> None:
    rollout, _, first = _started_canary()
    rollout.ready("bert-canary")
    rollout.reconcile()
    rollout.figures.by_deployment = {
        "bert": GOOD,
        "bert-canary": GOOD.model_copy(update={"mean_latency_us": 20_000}),
    }
    rollout.clock.now += 30
    outcome = rollout.reconcile()
    assert outcome.ready
    assert not rollout.has("bert-canary") and rollout.digest("bert") == first
    status = rollout.status()
    assert status["rollout"]["phase"] == "RolledBack" and status["rollout"]["summary"] == "RolledBack"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Canary"]["status"] == "False" and conditions["Canary"]["reason"] == "CanaryFailed"
    assert "latency ratio 2.00" in conditions["Canary"]["message"]
    assert "maxLatencyRatio 1.25" in conditions["Canary"]["message"]
    (warning,) = [e for e in rollout.cluster.events if e["reason"] == "CanaryFailed"]
    assert warning["type"] == "Warning" and "latency ratio 2.00" in warning["message"]
    # Later rounds keep the stable revision and post nothing more.
    rollout.clock.now += 300
    rollout.reconcile()
    assert not rollout.has("bert-canary") and rollout.digest("bert") == first
    assert len([e for e in rollout.cluster.events if e["reason"] == "CanaryFailed"]) == 1


def test_a_restarted_operator_resumes_at_the_same_step() -> None:
    rollout, _, _ = _started_canary()
    rollout.ready("bert-canary")
    rollout.reconcile()
    rollout.figures.by_deployment = {"bert": GOOD, "bert-canary": GOOD}
    rollout.clock.now += 61
    rollout.reconcile()
    before = rollout.status()["rollout"]
    assert before["step"] == 2
    rollout.reconciler = rollout.new_reconciler()  # nothing carried over in memory
    rollout.reconcile()
    after = rollout.status()["rollout"]
    kept = ("phase", "step", "weight", "canaryDigest", "stableDigest", "stepStartedAt", "lastAnalysis")
    assert {key: after.get(key) for key in kept} == {key: before.get(key) for key in kept}
    assert rollout.cluster.body(DEPLOYMENT, NAMESPACE, "bert-canary")["spec"]["replicas"] == 3


def test_deleting_the_canary_spec_aborts_and_removes_the_canary() -> None:
    rollout, spec, first = _started_canary()
    rollout.apply({k: v for k, v in spec.items() if k != "rollout"})
    rollout.reconcile()
    assert not rollout.has("bert-canary")
    assert rollout.status()["rollout"]["phase"] == "Aborted"
    assert rollout.digest("bert") != first  # RollingUpdate: the spec now rolls the stable Deployment
    assert "CanaryAborted" in [e["reason"] for e in rollout.cluster.events]


def test_http_route_without_the_gateway_api_is_reported() -> None:
    rollout, spec, _ = _started_canary()
    spec = {
        **spec,
        "rollout": {"strategy": "Canary", "canary": {"traffic": "HTTPRoute", "gatewayRef": {"name": "gw"}}},
    }
    rollout.apply(spec)
    outcome = rollout.reconcile()
    assert not outcome.ready and "needs the Gateway API" in outcome.message
    assert rollout.cluster.exists(SERVICE, NAMESPACE, "bert-canary")


def test_autoscaled_canary_follows_the_stable_deployments_replicas() -> None:
    rollout = Rollout()
    spec: dict[str, Any] = {
        "model": {"source": "hf://org/m", "task": "text-classification", "revision": "v1"},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 10, "metric": "queueTime"},
        **CANARY_SPEC,
    }
    rollout.apply(spec)
    rollout.reconcile()
    # The HPA (another field manager) scales the stable Deployment to 9.
    rollout.cluster.edit(DEPLOYMENT, NAMESPACE, "bert", {"spec": {"replicas": 9}}, manager="hpa")
    rollout.ready("bert")
    rollout.reconcile()
    rollout.apply({**spec, "model": {**spec["model"], "revision": "v2"}})
    rollout.reconcile()
    hpa = rollout.cluster.body(HORIZONTAL_POD_AUTOSCALER, NAMESPACE, "bert")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "bert"
    assert rollout.cluster.body(DEPLOYMENT, NAMESPACE, "bert-canary")["spec"]["replicas"] == 1  # 1/10
    assert rollout.cluster.body(DEPLOYMENT, NAMESPACE, "bert")["spec"]["replicas"] == 9
    rollout.cluster.edit(DEPLOYMENT, NAMESPACE, "bert", {"spec": {"replicas": 18}}, manager="hpa")
    rollout.reconcile()
    assert rollout.cluster.body(DEPLOYMENT, NAMESPACE, "bert-canary")["spec"]["replicas"] == 2  # 2/20


def test_http_route_weights_follow_the_steps_where_the_gateway_api_is_installed() -> None:
    rollout = Rollout()
    rollout.cluster = FakeCluster(crds=[HTTP_ROUTE_CRD])
    rollout.reconciler = rollout.new_reconciler()
    route_spec = {
        "strategy": "Canary",
        "canary": {**CANARY_SPEC["rollout"]["canary"], "traffic": "HTTPRoute"},
    }
    route_spec["canary"]["gatewayRef"] = {"name": "gw", "namespace": "gateways"}
    spec: dict[str, Any] = {
        "model": {"source": "hf://org/m", "task": "text-classification", "revision": "v1"},
        "replicas": 4,
        "rollout": route_spec,
    }
    rollout.apply(spec)
    rollout.reconcile()
    rollout.ready("bert")
    rollout.reconcile()
    assert weights_of(rollout) == [("bert", 100)]  # the Gateway's route exists between canaries too
    rollout.apply({**spec, "model": {**spec["model"], "revision": "v2"}})
    assert rollout.reconcile().ready

    assert weights_of(rollout) == [("bert", 90), ("bert-canary", 10)]
    assert rollout.cluster.body(DEPLOYMENT, NAMESPACE, "bert-canary")["spec"]["replicas"] == 1
    assert rollout.cluster.exists(SERVICE, NAMESPACE, "bert-canary")
    rollout.ready("bert-canary")
    rollout.reconcile()
    rollout.figures.by_deployment = {"bert": GOOD, "bert-canary": GOOD}
    rollout.clock.now += 61
    rollout.reconcile()
    assert weights_of(rollout) == [("bert", 50), ("bert-canary", 50)]
    assert rollout.cluster.body(DEPLOYMENT, NAMESPACE, "bert-canary")["spec"]["replicas"] == 2
    bad = GOOD.model_copy(update={"error_ratio": 0.5})
    rollout.figures.by_deployment = {"bert": GOOD, "bert-canary": bad}
    rollout.ready("bert-canary")
    rollout.reconcile()
    rollout.clock.now += 31
    rollout.reconcile()
    assert rollout.status()["rollout"]["phase"] == "RolledBack"
    for kind in (SERVICE, DEPLOYMENT):
        assert not rollout.cluster.exists(kind, NAMESPACE, "bert-canary")
    assert weights_of(rollout) == [("bert", 100)]


def weights_of(rollout: Rollout) -> list[tuple[str, int]]:
    route = rollout.cluster.body(HTTP_ROUTE, NAMESPACE, "bert")
    return [(b["name"], b["weight"]) for b in route["spec"]["rules"][0]["backendRefs"]]
