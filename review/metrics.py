"""The review app's own Prometheus metrics: HTTP request latency by route, and the build.

The exporter (`vitrine metrics`) reads Postgres and Redis; what only the serving process knows
(how long its answers take) is served here, at `/metrics`, to callers with an API token.
"""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.ops.metrics import vitrine_version

# From a 2 ms page to the 30 s long poll of `GET /api/v1/listings/{id}?wait=`.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED = "unmatched"  # requests no route answers: one label, whatever their paths


class AppMetrics:
    """One registry per app, so that two apps in one process (tests) count apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Labelled by the route's template (`/api/v1/listings/{external_id}`), never the raw path:
        # the number of series stays the number of routes.
        self.requests = Histogram(
            "vitrine_http_request_seconds",
            "Seconds from a request's arrival to its answer, by route template, method and status class.",
            ["route", "method", "status"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        # What marketplaces sent, by what became of each item (`created`, `requeued`, `unchanged`,
        # or `rejected` with its error), counted where the API answered.
        self.listings = Counter(
            "vitrine_listings_received",
            "Listings received through POST /api/v1/listings, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        build = Gauge(
            "vitrine_build_info", "Always 1; the labels name the running build.", ["version", "python"],
            registry=self.registry,
        )  # fmt: skip
        build.labels(version=vitrine_version(), python=platform.python_version()).set(1)

    def observe(self, route: str | None, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route or UNMATCHED, method, f"{status // 100}xx").observe(seconds)
