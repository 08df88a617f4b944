"""The canary analysis's metrics: Triton's own counters, read from a Prometheus query API.

Each revision is told apart by its pods' names, which every Kubernetes scrape (a ServiceMonitor, or
plain kubernetes_sd with the usual relabelling) labels `pod` and `namespace`: the stable Deployment's pods
are `<deployment>-<hash>-<suffix>`, the canary's `<deployment>-canary-<hash>-<suffix>` (PromQL regexes are
anchored, so neither pattern matches the other's pods). Durations and request counts are cumulative
counters, so each figure is an `increase` over the analysis interval.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import httpx2 as httpx

from modeldeploy.api import RevisionMetrics
from modeldeploy.names import DNS1035_LABEL

QUERY_TIMEOUT_SECONDS = 10.0
POD_NAME_TAIL = "-[a-z0-9]+-[a-z0-9]+"


class MetricsError(Exception):
    """Prometheus could not answer (unreachable, a bad query, an error status)."""


@dataclass(frozen=True)
class RevisionSelector:
    """The series of one revision: its namespace, pods and Triton model."""

    namespace: str
    deployment: str
    model: str

    def matchers(self) -> str:
        # Deployment names are DNS-1035 labels: nothing in them is special to RE2 or to a PromQL string
        # (Python's re.escape would write `\-`, which PromQL refuses as an unknown escape).
        if not re.fullmatch(DNS1035_LABEL, self.deployment):
            raise ValueError(f"{self.deployment!r} is not a Deployment name")
        pods = self.deployment + POD_NAME_TAIL
        return f'namespace="{self.namespace}",pod=~"{pods}",model="{self.model}"'


def revision_queries(selector: RevisionSelector, window_seconds: int) -> dict[str, str]:
    """PromQL for each figure of RevisionMetrics over the last `window_seconds`."""
    matchers = selector.matchers()

    def increase(metric: str) -> str:
        return f"sum(increase({metric}{{{matchers}}}[{window_seconds}s]))"

    return {
        "success": increase("nv_inference_request_success"),
        "failure": increase("nv_inference_request_failure"),
        "request_us": increase("nv_inference_request_duration_us"),
        "queue_us": increase("nv_inference_queue_duration_us"),
    }


def revision_metrics(figures: dict[str, float | None]) -> RevisionMetrics:
    """RevisionMetrics from the query results (None: no series, e.g. no request yet)."""
    success = figures.get("success") or 0.0
    failure = figures.get("failure") or 0.0
    requests = success + failure
    request_us, queue_us = figures.get("request_us"), figures.get("queue_us")
    return RevisionMetrics(
        requests=round(requests, 3),
        error_ratio=round(failure / requests, 6) if requests > 0 else None,
        mean_latency_us=round(request_us / success, 3) if success > 0 and request_us is not None else None,
        mean_queue_us=round(queue_us / success, 3) if success > 0 and queue_us is not None else None,
    )


class MetricsSource(Protocol):
    async def revision(self, selector: RevisionSelector, window_seconds: int) -> RevisionMetrics: ...


class PrometheusClient:
    """An instant-query client of one Prometheus (`GET /api/v1/query`)."""

    def __init__(self, base_url: str, client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=QUERY_TIMEOUT_SECONDS)

    async def close(self) -> None:
        await self._client.aclose()

    async def scalar(self, promql: str) -> float | None:
        """The value of a query that yields one sample (a `sum`); None when it yields none."""
        try:
            response = await self._client.get(f"{self.base_url}/api/v1/query", params={"query": promql})
        except httpx.HTTPError as exc:
            raise MetricsError(f"Prometheus at {self.base_url} is unreachable: {exc}") from exc
        try:
            body: dict[str, Any] = response.json()
        except ValueError as exc:
            raise MetricsError(f"Prometheus at {self.base_url} answered HTTP {response.status_code}") from exc
        if body.get("status") != "success":
            raise MetricsError(f"Prometheus refused {promql!r}: {body.get('error') or body}")
        result = (body.get("data") or {}).get("result") or []
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if value != value else value  # NaN: no data in the window

    async def revision(self, selector: RevisionSelector, window_seconds: int) -> RevisionMetrics:
        queries = revision_queries(selector, window_seconds)
        return revision_metrics({name: await self.scalar(promql) for name, promql in queries.items()})
