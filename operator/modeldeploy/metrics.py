"""The operator's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "modeldeploy_reconcile",
            "Reconciliations of a ModelDeployment, by trigger and result.",
            ["trigger", "result"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "modeldeploy_reconcile_duration_seconds",
            "Time one reconciliation took.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "modeldeploy_reconcile_errors",
            "Reconciliations that failed, by kind of error.",
            ["error"],
            registry=self.registry,
        )
        self.writes = Counter(
            "modeldeploy_api_writes",
            "Write requests sent to the API server, by kind of object and verb.",
            ["kind", "verb"],
            registry=self.registry,
        )
        self.managed = Gauge(
            "modeldeploy_managed_modeldeployments",
            "ModelDeployments the operator currently knows about.",
            registry=self.registry,
        )

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Expose /metrics on `port` from a background thread."""
        start_http_server(port, addr=address, registry=self.registry)
