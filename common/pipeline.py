"""The embed step: a batch of listing ids → photos → one forward pass → one transaction."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.clustering import load_suggestion_model, upsert_suggestions
from common.config import Settings
from common.db import session_scope
from common.imaging import FailureReason, ImageRejected, LoadedImage, http_client, load_image
from common.models import Embedding, Listing, ListingStatus
from common.storage import ObjectStore
from common.suggest import SuggestionModel
from common.vision import Backbone

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    listing_id: int
    loaded: LoadedImage | None = None
    tensor: torch.Tensor | None = None
    error: ImageRejected | None = None


@dataclass
class BatchReport:
    embedded: list[int] = field(default_factory=list)
    suggested: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    needs_review: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class EmbedPipeline:
    """Holds what a worker process keeps between batches: model, thread pool, suggestion model."""

    def __init__(self, settings: Settings, backbone: Backbone, store: ObjectStore | None = None):
        self.settings = settings
        self.backbone = backbone
        self._store = store
        self.http = http_client(settings)  # thread-safe; shared by the decode threads
        self.pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self._suggestions: SuggestionModel | None = None

    @property
    def store(self) -> ObjectStore:
        # Created on first use: a worker fed only http(s) URLs needs no object store settings.
        if self._store is None:
            self._store = ObjectStore.from_settings(self.settings)
        return self._store

    def _prepare(self, listing_id: int, url: str) -> Prepared:
        # Runs in the decode pool: fetch, decode and timm preprocessing release the GIL mostly.
        try:
            store = self.store if url.startswith("s3://") else None
            loaded = load_image(url, self.settings, store, self.http)
            return Prepared(listing_id, loaded, self.backbone.preprocess(loaded.image))
        except ImageRejected as error:
            return Prepared(listing_id, error=error)
        except Exception as error:  # one bad photo must never fail its batch
            log.exception("unexpected error preparing listing %s", listing_id)
            return Prepared(
                listing_id,
                error=ImageRejected(FailureReason.corrupt_image, f"{type(error).__name__}: {error}"),
            )

    def suggestion_model(self, session: Session) -> SuggestionModel | None:
        self._suggestions = load_suggestion_model(
            session, self.backbone.backbone_id, self.settings, cached=self._suggestions
        )
        return self._suggestions

    def run(self, listing_ids: Sequence[int]) -> BatchReport:
        report = BatchReport()
        started = time.perf_counter()
        claimed = claim_listings(sorted(set(listing_ids)), self.settings.max_attempts)
        report.skipped = sorted(set(listing_ids) - {c[0] for c in claimed})
        over = [lid for lid, _url, attempts in claimed if attempts > self.settings.max_attempts]
        work = [(lid, url) for lid, url, attempts in claimed if attempts <= self.settings.max_attempts]

        prepared = list(self.pool.map(lambda item: self._prepare(*item), work))
        good = [p for p in prepared if p.tensor is not None]
        report.seconds["prepare"] = time.perf_counter() - started

        forward_started = time.perf_counter()
        vectors = (
            self.backbone.embed_tensors(torch.stack([p.tensor for p in good]))  # type: ignore[misc]
            if good
            else np.zeros((0, self.backbone.dim), dtype=np.float32)
        )
        report.seconds["forward"] = time.perf_counter() - forward_started

        write_started = time.perf_counter()
        with session_scope() as session:
            model = self.suggestion_model(session)
            store_embeddings(session, self.backbone, good, vectors)
            if model is not None and good:
                rows = upsert_suggestions(
                    session, model, [p.listing_id for p in good], vectors, self.settings
                )
                report.suggested = [r.listing_id for r in rows]
                report.needs_review = [r.listing_id for r in rows if r.needs_review]
            else:
                session.execute(
                    update(Listing)
                    .where(Listing.id.in_([p.listing_id for p in good]))
                    .values(status=ListingStatus.embedded)
                )
            for p in prepared:
                if p.error is not None:
                    mark_failed(session, p.listing_id, p.error.reason, p.error.detail)
                    report.failed[p.listing_id] = p.error.reason
            for listing_id in over:
                mark_failed(
                    session,
                    listing_id,
                    FailureReason.too_many_attempts,
                    f"gave up after {self.settings.max_attempts} attempts",
                )
                report.failed[listing_id] = FailureReason.too_many_attempts
        report.embedded = [p.listing_id for p in good]
        report.seconds["write"] = time.perf_counter() - write_started
        report.seconds["total"] = time.perf_counter() - started
        return report


def claim_listings(listing_ids: Sequence[int], max_attempts: int) -> list[tuple[int, str, int]]:
    """Count an attempt for each listing still queued; return (id, url, attempts).

    Committed before the work starts, so a photo that kills its worker is given up on after
    `max_attempts` deliveries instead of being retried forever.
    """
    if not listing_ids:
        return []
    with session_scope() as session:
        rows = session.execute(
            update(Listing)
            .where(Listing.id.in_(listing_ids), Listing.status == ListingStatus.queued)
            .values(attempts=Listing.attempts + 1)
            .returning(Listing.id, Listing.image_url, Listing.attempts)
        ).all()
    return [(row[0], row[1], row[2]) for row in rows]


def store_embeddings(
    session: Session, backbone: Backbone, prepared: Sequence[Prepared], vectors: np.ndarray
) -> None:
    if not prepared:
        return
    rows = [
        {
            "listing_id": p.listing_id,
            "backbone_id": backbone.backbone_id,
            "image_sha256": p.loaded.sha256,  # type: ignore[union-attr]
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
                "id": p.listing_id,
                "image_sha256": p.loaded.sha256,
                "failure_reason": None,
                "failure_detail": None,
            }  # type: ignore[union-attr]
            for p in prepared
        ],
    )


def mark_failed(session: Session, listing_id: int, reason: str, detail: str) -> None:
    session.execute(
        update(Listing)
        .where(Listing.id == listing_id)
        .values(status=ListingStatus.failed, failure_reason=str(reason), failure_detail=detail[:2000])
    )
