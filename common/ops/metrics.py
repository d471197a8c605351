"""Prometheus exporter for `vitrine metrics`: a collector that reads Postgres and Redis on every scrape."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.db import Database
from common.ops.status import THROUGHPUT_WINDOW, Snapshot, collect
from common.settings import Settings

PREFIX = "vitrine"


class VitrineCollector(Collector):
    """Reads a fresh snapshot per scrape, so the exporter holds no state that can drift."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        # No worker ping (it always waits its full timeout) and no S3 probe: Flower's own
        # /metrics covers workers, and S3 is only touched by the explain worker.
        snapshot = collect(self.settings, self.db, ping_timeout=None, check_s3=False)
        yield from snapshot_metrics(snapshot)
        yield GaugeMetricFamily(
            f"{PREFIX}_scrape_duration_seconds",
            "Time this exporter took to read Postgres and Redis.",
            value=time.monotonic() - started,
        )


def _by_label(name: str, documentation: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def snapshot_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    up = GaugeMetricFamily(f"{PREFIX}_up", "1 when the service answered this scrape.", labels=["service"])
    for service, error in snapshot.services.items():
        up.add_metric([service], 0.0 if error else 1.0)
    yield up

    if snapshot.queues is not None:
        yield _by_label("queue_depth", "Messages waiting in a Celery queue.", "queue", snapshot.queues)
    if snapshot.unacked is not None:
        yield GaugeMetricFamily(
            f"{PREFIX}_unacked_messages",
            "Messages delivered to a worker and not yet acknowledged.",
            value=snapshot.unacked,
        )

    if snapshot.listings_by_status is not None:
        yield _by_label("listings", "Listings by status.", "status", snapshot.listings_by_status)
    if snapshot.failures_by_reason is not None:
        yield _by_label(
            "listing_failures", "Failed listings by failure reason.", "reason", snapshot.failures_by_reason
        )
    if snapshot.needs_review is not None:
        yield GaugeMetricFamily(
            f"{PREFIX}_suggestions_awaiting_review",
            "Suggestions below the confidence threshold that no moderator has decided yet.",
            value=snapshot.needs_review,
        )
    if snapshot.explanations is not None:
        yield GaugeMetricFamily(
            f"{PREFIX}_explanations", "Suggestions with a Grad-CAM overlay.", value=snapshot.explanations
        )
    if snapshot.explain_errors is not None:
        yield GaugeMetricFamily(
            f"{PREFIX}_explain_errors",
            "Suggestions whose Grad-CAM overlay failed.",
            value=snapshot.explain_errors,
        )
    if snapshot.reconciled is not None:
        yield CounterMetricFamily(
            f"{PREFIX}_reconciled_messages",
            "Messages the sweep found lost in the broker (long waiting, held nowhere) and sent again.",
            value=snapshot.reconciled,
        )
    if snapshot.embeddings_total is not None:
        yield CounterMetricFamily(
            f"{PREFIX}_embeddings",
            "Embeddings stored (rate() of this is the embed throughput).",
            value=snapshot.embeddings_total,
        )
    if snapshot.embeddings_recent is not None:
        window = int(THROUGHPUT_WINDOW.total_seconds())
        yield GaugeMetricFamily(
            f"{PREFIX}_embeddings_recent",
            f"Embeddings created in the last {window} seconds.",
            value=snapshot.embeddings_recent,
        )

    yield from _clustering_metrics(snapshot)


def _clustering_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    clustering = snapshot.clustering
    if clustering is None:
        return
    labels = ["backbone"]
    backbone = [str(clustering["backbone"])]
    series = (
        ("version", "Id of the current clustering version.", "version"),
        ("k", "Number of clusters of the current clustering.", "k"),
        ("ari", "Adjusted Rand Index of the current clustering against its labels.", "ari"),
        ("nmi", "Normalised mutual information of the current clustering against its labels.", "nmi"),
        ("stability_ari", "ARI of the current clustering against the previous version.", "stability"),
        ("age_seconds", "Seconds since the current clustering was fitted.", "age_seconds"),
        ("fit_seconds", "How long fitting the current clustering took.", "fit_seconds"),
        ("target_precision", "Precision the auto-accept threshold is estimated for.", "target_precision"),
        ("threshold", "Auto-accept confidence threshold estimated at refit.", "threshold"),
        (
            "estimated_precision",
            "Cross-validated precision of suggestions accepted at the estimated threshold.",
            "estimated_precision",
        ),
        (
            "estimated_coverage",
            "Cross-validated share of listings accepted at the estimated threshold.",
            "estimated_coverage",
        ),
        ("threshold_override", "Configured threshold that replaces the estimate.", "threshold_override"),
    )
    for name, help_text, key in series:
        value = clustering.get(key)
        # ARI/NMI are NULL without labels: an absent series, not a fake zero.
        if value is None:
            continue
        gauge = GaugeMetricFamily(f"{PREFIX}_clustering_{name}", help_text, labels=labels)
        gauge.add_metric(backbone, float(value))
        yield gauge
    # Timestamps as well as ages: `time() - x` in a rule stays right however old the scrape is.
    created = GaugeMetricFamily(
        f"{PREFIX}_clustering_created_timestamp_seconds",
        "Unix time the current clustering was fitted.",
        labels=labels,
    )
    created.add_metric(backbone, datetime.fromisoformat(str(clustering["created_at"])).timestamp())
    yield created
    if snapshot.last_refit is not None:
        yield GaugeMetricFamily(
            f"{PREFIX}_refit_last_duration_seconds",
            "How long the newest refit (current or not) took to fit.",
            value=float(snapshot.last_refit["seconds"]),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_refit_last_timestamp_seconds",
            "Unix time of the newest refit (current or not).",
            value=datetime.fromisoformat(str(snapshot.last_refit["at"])).timestamp(),
        )


def registry(settings: Settings, db: Database) -> CollectorRegistry:
    """A registry with only Vitrine's collector (no process metrics of the exporter itself)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(VitrineCollector(settings, db))
    return reg
