"""The operator's own Prometheus metrics."""

from __future__ import annotations

from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # Every metric goes into this registry, the one serve() exposes.
        counter, gauge = partial(Counter, registry=self.registry), partial(Gauge, registry=self.registry)
        histogram = partial(Histogram, registry=self.registry)
        self.reconciles = counter(
            "modeldeploy_reconcile",
            "Reconciliations of a ModelDeployment, by trigger and result.",
            ["trigger", "result"],
        )
        self.reconcile_duration = histogram(
            "modeldeploy_reconcile_duration_seconds",
            "Time one reconciliation took.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.reconcile_errors = counter(
            "modeldeploy_reconcile_errors", "Reconciliations that failed, by kind of error.", ["error"]
        )
        self.writes = counter(
            "modeldeploy_api_writes",
            "Write requests sent to the API server, by kind of object and verb.",
            ["kind", "verb"],
        )
        self.managed = gauge(
            "modeldeploy_managed_modeldeployments", "ModelDeployments the operator currently knows about."
        )

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Expose /metrics on `port` from a background thread."""
        start_http_server(port, addr=address, registry=self.registry)
