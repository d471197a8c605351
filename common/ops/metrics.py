"""Prometheus exporter for `vitrine metrics`: a collector that reads Postgres and Redis on every scrape."""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from common.db import Database
from common.ops.status import THROUGHPUT_WINDOW, Snapshot, collect
from common.schema import ClusteringVersion, Listing, ModeratorDecision, Suggestion
from common.settings import Settings

PREFIX = "vitrine"


def vitrine_version() -> str:
    try:
        return version("vitrine")
    except PackageNotFoundError:
        return "unknown"


# From a batch that suggests within a second to a listing that waited an hour for the broker.
LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


class SuggestionLatency:
    """Seconds from a listing's arrival to its first suggestion, as a cumulative histogram.

    Each scrape adds the suggestions created since the last one (by id, so each is counted once);
    those before the exporter started are not counted. Prometheus reads a restart as a reset.
    """

    def __init__(self) -> None:
        self.last_id: int | None = None
        self.counts = [0] * len(LATENCY_BUCKETS)
        self.total = 0
        self.sum = 0.0

    def update(self, session: Session) -> None:
        if self.last_id is None:
            self.last_id = int(
                session.execute(select(func.coalesce(func.max(Suggestion.id), 0))).scalar_one()
            )
            return
        rows = session.execute(
            select(Suggestion.id, func.extract("epoch", Suggestion.created_at - Listing.created_at))
            .join(Listing, Listing.id == Suggestion.listing_id)
            .where(Suggestion.id > self.last_id)
            .order_by(Suggestion.id)
            .limit(100_000)
        ).all()
        for suggestion_id, seconds in rows:
            value = max(float(seconds or 0.0), 0.0)
            self.total += 1
            self.sum += value
            for i, bound in enumerate(LATENCY_BUCKETS):
                if value <= bound:
                    self.counts[i] += 1
            self.last_id = int(suggestion_id)

    def metric(self) -> HistogramMetricFamily:
        buckets = [(str(bound), float(n)) for bound, n in zip(LATENCY_BUCKETS, self.counts, strict=True)]
        return HistogramMetricFamily(
            f"{PREFIX}_publish_to_suggestion_seconds",
            "Seconds from a listing's arrival to its first suggestion (made since the exporter started).",
            buckets=[*buckets, ("+Inf", float(self.total))],
            sum_value=self.sum,
        )


def event_metrics(session: Session) -> Iterator[Metric]:
    """Counters of what happened, read off rows that are never deleted (the audit, the refits)."""
    decisions = CounterMetricFamily(
        f"{PREFIX}_decisions", "Moderator actions recorded, by action.", labels=["action"]
    )
    for action, n in session.execute(
        select(ModeratorDecision.action, func.count())
        .group_by(ModeratorDecision.action)
        .order_by(ModeratorDecision.action)
    ).all():
        decisions.add_metric([str(action)], float(n))
    yield decisions
    refits = session.execute(select(func.count()).select_from(ClusteringVersion)).scalar_one()
    yield CounterMetricFamily(
        f"{PREFIX}_refits", "Clusterings fitted (refits that finished).", value=float(refits)
    )


class VitrineCollector(Collector):
    """Reads a fresh snapshot per scrape; only the latency histogram accumulates between scrapes."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.latency = SuggestionLatency()

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        # No worker ping (it always waits its full timeout) and no S3 probe: Flower's own
        # /metrics covers workers (and the embed batches' run time), and S3 is only touched by
        # the explain worker.
        snapshot = collect(self.settings, self.db, ping_timeout=None, check_s3=False)
        yield from snapshot_metrics(snapshot)
        build = GaugeMetricFamily(
            f"{PREFIX}_build_info",
            "Always 1; the labels name the running build.",
            labels=["version", "python"],
        )
        build.add_metric([vitrine_version(), platform.python_version()], 1.0)
        yield build
        if "postgres" not in snapshot.unreachable:
            try:
                with self.db.transaction() as session:
                    events = list(event_metrics(session))
                    self.latency.update(session)
                yield from events
                yield self.latency.metric()
            except SQLAlchemyError:
                pass  # `vitrine_up{service="postgres"}` says so on the next scrape
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
