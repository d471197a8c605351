"""A snapshot of the whole system (services, listings, clustering, queues, workers) for `vitrine status`.

The same snapshot feeds the Prometheus exporter in `common.ops.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from common.db import Database
from common.delivery.publisher import BROKER_ERRORS, producer_app, queue_depths
from common.delivery.queues import QUEUES
from common.delivery.sweep import reconciled_total
from common.object_store import STORAGE_ERRORS, ObjectStore
from common.schema import ClusteringVersion, Embedding, Listing, ListingStatus, Suggestion
from common.settings import Settings

KOMBU_UNACKED_KEY = "unacked"
THROUGHPUT_WINDOW = timedelta(minutes=5)
CONNECT_TIMEOUT = 3.0


@dataclass
class Snapshot:
    """Everything `vitrine status` prints; a section is None when its service did not answer."""

    services: dict[str, str | None] = field(default_factory=dict)  # name → error, None when healthy
    listings_by_status: dict[str, int] | None = None
    failures_by_reason: dict[str, int] | None = None
    needs_review: int | None = None
    explanations: int | None = None
    explain_errors: int | None = None
    # Messages the sweep found lost in the broker and sent again, over the deployment's life.
    reconciled: int | None = None
    embeddings_total: int | None = None
    embeddings_recent: int | None = None
    clustering: dict[str, Any] | None = None
    last_refit: dict[str, Any] | None = None
    queues: dict[str, int] | None = None
    unacked: int | None = None
    workers: list[str] | None = None

    @property
    def unreachable(self) -> list[str]:
        return [name for name, error in self.services.items() if error is not None]

    def as_json(self) -> dict[str, Any]:
        return {
            "services": {
                name: {"ok": error is None, "error": error} for name, error in self.services.items()
            },
            "listings_by_status": self.listings_by_status,
            "failures_by_reason": self.failures_by_reason,
            "needs_review": self.needs_review,
            "explanations": self.explanations,
            "explain_errors": self.explain_errors,
            "reconciled_total": self.reconciled,
            "embeddings": {
                "total": self.embeddings_total,
                f"last_{int(THROUGHPUT_WINDOW.total_seconds())}s": self.embeddings_recent,
            },
            "clustering": self.clustering or dict.fromkeys(CLUSTERING_KEYS),
            "last_refit": self.last_refit,
            "queues": self.queues,
            "unacked": self.unacked,
            "workers": self.workers,
        }


CLUSTERING_KEYS = (
    "version",
    "backbone",
    "k",
    "ari",
    "nmi",
    "stability",
    "n_vectors",
    "n_labelled",
    "fit_seconds",
    "created_at",
    "age_seconds",
    "method",
    "target_precision",
    "threshold",
    "estimated_precision",
    "estimated_coverage",
    "threshold_override",
)


def status_database(settings: Settings) -> Database:
    """A small pool with a connect timeout: a status probe must fail fast, not hang."""
    return Database(
        settings.services.database_url,
        pool_size=2,
        max_overflow=2,
        connect_args={"connect_timeout": int(CONNECT_TIMEOUT)},
    )


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.services.broker_url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT
    )


def _error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def database_section(session: Session, settings: Settings, snapshot: Snapshot) -> None:
    """Listings, suggestions, embeddings and clustering: what Postgres knows."""
    rows = session.execute(select(Listing.status, func.count()).group_by(Listing.status)).all()
    counts: dict[str, int] = {str(status): int(n) for status, n in rows}
    snapshot.listings_by_status = {status.value: int(counts.pop(status.value, 0)) for status in ListingStatus}
    snapshot.listings_by_status.update({str(k): int(v) for k, v in counts.items()})
    snapshot.failures_by_reason = {
        str(reason or "unknown"): int(n)
        for reason, n in session.execute(
            select(Listing.failure_reason, func.count())
            .where(Listing.status == ListingStatus.failed)
            .group_by(Listing.failure_reason)
            .order_by(Listing.failure_reason)
        ).all()
    }
    # Waiting for review: flagged and not yet decided (a decision moves the listing to `reviewed`).
    needs_review, explanations, explain_errors = session.execute(
        select(
            func.count().filter(Suggestion.needs_review, Listing.status == ListingStatus.suggested),
            func.count().filter(Suggestion.overlay_key.is_not(None)),
            func.count().filter(Suggestion.explain_error.is_not(None)),
        )
        .select_from(Suggestion)
        .join(Listing, Listing.id == Suggestion.listing_id)
    ).one()
    snapshot.needs_review = int(needs_review)
    snapshot.explanations = int(explanations)
    snapshot.explain_errors = int(explain_errors)
    snapshot.reconciled = reconciled_total(session)
    now = datetime.now(UTC)
    total, recent = session.execute(
        select(
            func.count(),
            func.count().filter(Embedding.created_at >= now - THROUGHPUT_WINDOW),
        ).select_from(Embedding)
    ).one()
    snapshot.embeddings_total, snapshot.embeddings_recent = int(total), int(recent)

    version = session.execute(
        select(ClusteringVersion)
        .where(
            ClusteringVersion.is_current,
            ClusteringVersion.backbone_id.startswith(settings.backbone.model + "@"),
        )
        .order_by(ClusteringVersion.created_at.desc(), ClusteringVersion.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if version is not None:
        snapshot.clustering = {
            "version": version.id,
            "backbone": version.backbone_id,
            "k": version.k,
            "ari": version.ari,
            "nmi": version.nmi,
            "stability": version.stability_ari,
            "n_vectors": version.n_vectors,
            "n_labelled": version.n_labelled,
            "fit_seconds": version.fit_seconds,
            "created_at": version.created_at.isoformat(),
            "age_seconds": round((now - version.created_at).total_seconds(), 1),
            # The auto-accept threshold the refit estimated for the target precision, and what
            # cross-validation expects of it; a configured override replaces it in `needs_review`.
            "method": version.suggestion_method,
            "target_precision": version.target_precision,
            "threshold": version.threshold,
            "estimated_precision": version.estimated_precision,
            "estimated_coverage": version.estimated_coverage,
            "threshold_override": settings.suggestions.confidence_threshold,
        }
    last = session.execute(
        select(ClusteringVersion.id, ClusteringVersion.fit_seconds, ClusteringVersion.created_at)
        .order_by(ClusteringVersion.created_at.desc(), ClusteringVersion.id.desc())
        .limit(1)
    ).one_or_none()
    if last is not None:
        snapshot.last_refit = {
            "version": last.id,
            "seconds": last.fit_seconds,
            "at": last.created_at.isoformat(),
        }


def ping_workers(settings: Settings, timeout: float) -> list[str]:
    """Names of the Celery workers that answer a broadcast ping within `timeout` seconds."""
    app = producer_app(settings, "vitrine-status")
    app.conf.broker_connection_retry_on_startup = False
    app.conf.broker_connection_max_retries = 0
    try:
        replies = app.control.ping(timeout=timeout) or []
    finally:
        app.close()
    return sorted(name for reply in replies for name in reply)


def collect(
    settings: Settings, db: Database, *, ping_timeout: float | None = 1.0, check_s3: bool = True
) -> Snapshot:
    """Ask each service in turn; a service that fails is recorded by name, never raised."""
    snapshot = Snapshot()

    try:
        with db.sessions() as session:
            database_section(session, settings, snapshot)
        snapshot.services["postgres"] = None
    except SQLAlchemyError as error:
        snapshot.services["postgres"] = _error(error)

    client = redis_client(settings)
    try:
        client.ping()
        snapshot.queues = queue_depths(client, QUEUES)
        snapshot.unacked = int(client.hlen(KOMBU_UNACKED_KEY))
        snapshot.services["redis"] = None
    except redis.RedisError as error:
        snapshot.services["redis"] = _error(error)
    finally:
        client.close()

    if check_s3:
        try:
            ObjectStore.from_settings(settings, probe=True).client.bucket_exists(settings.store.images_bucket)
            snapshot.services["s3"] = None
        except STORAGE_ERRORS as error:
            snapshot.services["s3"] = _error(error)

    if ping_timeout is not None and snapshot.services.get("redis") is None:
        try:
            snapshot.workers = ping_workers(settings, ping_timeout)
        except BROKER_ERRORS:
            snapshot.workers = None  # unknown, not "none answered"
    return snapshot
