"""The embed step: a batch of listing ids → photos → one forward pass → one transaction."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.config import Settings
from common.db import Database
from common.imaging import FailureReason, LoadedImage, http_client, load_image
from common.models import Embedding, Listing, ListingStatus
from common.storage import ObjectStore
from common.suggest import SuggestionModel
from common.suggestions import explanation_wanted, load_suggestion_model, upsert_suggestions
from common.vision import Backbone, Prepared, embed_prepared, prepare_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claimed:
    listing_id: int
    url: str
    attempts: int


@dataclass
class BatchReport:
    embedded: list[int] = field(default_factory=list)
    suggested: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    explain: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class EmbedPipeline:
    """What an embed worker keeps between batches: model, decode threads, HTTP client, suggestion model."""

    def __init__(self, settings: Settings, db: Database, backbone: Backbone, store: ObjectStore) -> None:
        self.settings = settings
        self.db = db
        self.backbone = backbone
        self.store = store
        self.http = http_client(settings)  # thread-safe; shared by the decode threads
        self.pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self._suggestions: SuggestionModel | None = None

    def load(self, item: Claimed) -> LoadedImage:
        return load_image(item.url, self.settings, self.store, self.http)

    def run(self, listing_ids: Sequence[int]) -> BatchReport:
        report = BatchReport()
        started = time.perf_counter()
        claimed = claim_listings(self.db, sorted(set(listing_ids)))
        report.skipped = sorted(set(listing_ids) - {c.listing_id for c in claimed})
        over = [c for c in claimed if c.attempts > self.settings.max_attempts]
        work = [c for c in claimed if c.attempts <= self.settings.max_attempts]

        prepared = prepare_batch(self.backbone, work, self.load, self.pool)
        good = [p for p in prepared if p.tensor is not None]
        report.seconds["prepare"] = time.perf_counter() - started

        forward_started = time.perf_counter()
        vectors = embed_prepared(self.backbone, prepared)
        report.seconds["forward"] = time.perf_counter() - forward_started

        write_started = time.perf_counter()
        with self.db.transaction() as session:
            self._store_results(session, good, vectors, report)
            for p in prepared:
                if p.error is not None:
                    mark_failed(session, p.source.listing_id, p.error.reason, p.error.detail)
                    report.failed[p.source.listing_id] = p.error.reason
            for item in over:
                detail = f"gave up after {self.settings.max_attempts} attempts"
                mark_failed(session, item.listing_id, FailureReason.too_many_attempts, detail)
                report.failed[item.listing_id] = FailureReason.too_many_attempts
        report.embedded = [p.source.listing_id for p in good]
        report.seconds["write"] = time.perf_counter() - write_started
        report.seconds["total"] = time.perf_counter() - started
        return report

    def _store_results(
        self, session: Session, good: list[Prepared[Claimed]], vectors: np.ndarray, report: BatchReport
    ) -> None:
        """Embeddings, then a suggestion under the current clustering (or `embedded` without one)."""
        store_embeddings(session, self.backbone, good, vectors)
        ids = [p.source.listing_id for p in good]
        self._suggestions = load_suggestion_model(
            session, self.backbone.backbone_id, self.settings, cached=self._suggestions
        )
        if self._suggestions is None:
            session.execute(update(Listing).where(Listing.id.in_(ids)).values(status=ListingStatus.embedded))
            return
        rows = upsert_suggestions(session, self._suggestions, ids, vectors, self.settings)
        report.suggested = [r.listing_id for r in rows]
        report.explain = explanation_wanted(rows, self.settings.explain_sample_rate)


def claim_listings(db: Database, listing_ids: Sequence[int]) -> list[Claimed]:
    """Count an attempt for each listing still queued.

    Committed before the work starts, so a photo that kills its worker is given up on after
    `max_attempts` deliveries instead of being retried forever.
    """
    if not listing_ids:
        return []
    with db.transaction() as session:
        rows = session.execute(
            update(Listing)
            .where(Listing.id.in_(listing_ids), Listing.status == ListingStatus.queued)
            .values(attempts=Listing.attempts + 1)
            .returning(Listing.id, Listing.image_url, Listing.attempts)
        ).all()
    return [Claimed(row[0], row[1], row[2]) for row in rows]


def store_embeddings(
    session: Session, backbone: Backbone, prepared: Sequence[Prepared[Claimed]], vectors: np.ndarray
) -> None:
    if not prepared:
        return
    rows = [
        {
            "listing_id": p.source.listing_id,
            "backbone_id": backbone.backbone_id,
            "image_sha256": p.sha256,
            "dim": backbone.dim,
            "vector": vector,
        }
        for p, vector in zip(prepared, vectors, strict=True)
    ]
    statement = insert(Embedding).values(rows)
    # Idempotent: a redelivered message rewrites the same vector under the same key.
    session.execute(
        statement.on_conflict_do_update(
            constraint="uq_embedding_listing_backbone",
            set_={
                "vector": statement.excluded.vector,
                "image_sha256": statement.excluded.image_sha256,
                "dim": statement.excluded.dim,
            },
        )
    )
    # One executemany: ORM bulk UPDATE by primary key.
    session.execute(
        update(Listing),
        [
            {
                "id": p.source.listing_id,
                "image_sha256": p.sha256,
                "failure_reason": None,
                "failure_detail": None,
            }
            for p in prepared
        ],
    )


def mark_failed(session: Session, listing_id: int, reason: str, detail: str) -> None:
    session.execute(
        update(Listing)
        .where(Listing.id == listing_id)
        .values(status=ListingStatus.failed, failure_reason=str(reason), failure_detail=detail[:2000])
    )
