"""The embed step: a batch of listing ids → photos → one forward pass → one transaction.

What can go wrong, and what happens (see docs/reliability.md):
- the photo is at fault: the listing fails with its reason, its batch-mates go on;
- the image host or our object store does not answer: the listing is sent again later, the
  store's outages never counting against it;
- the database is away: the batch waits for it, holding its messages;
- the worker dies mid-batch: the listings it had claimed come back still claimed and are then
  handled one at a time, alone in the worker, so only a photo that kills the worker again and
  again fails (`too_many_attempts`), never its neighbours.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.db import Database, until_available
from common.delivery.queues import retry_delay
from common.jobs.claims import Claimed, claim_listings, split_suspects, still_current
from common.jobs.rescore import embedded_already
from common.object_store import ObjectStore
from common.photos.failures import FailureReason, Fault, ImageRejected
from common.photos.fetch import fetch_image_bytes, http_client
from common.schema import Embedding, Listing, ListingStatus
from common.settings import Settings
from common.suggestions.model import SuggestionModel
from common.suggestions.rows import explanation_wanted, load_suggestion_model, upsert_suggestions
from common.vision.backbone import Backbone
from common.vision.batch import Prepared, embed_prepared, prepare_batch
from common.webhooks import LISTING_FAILED
from common.webhooks.events import record_events

log = logging.getLogger(__name__)


@dataclass
class BatchReport:
    embedded: list[int] = field(default_factory=list)
    suggested: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    explain: list[int] = field(default_factory=list)
    retry: dict[int, float] = field(default_factory=dict)  # listing → seconds before its next try
    suspects: list[int] = field(default_factory=list)  # handled alone after a crash
    seconds: dict[str, float] = field(default_factory=lambda: {"prepare": 0.0, "forward": 0.0, "write": 0.0})

    def merge(self, other: BatchReport) -> None:
        """Add what one committed step decided."""
        self.embedded += other.embedded
        self.suggested += other.suggested
        self.failed.update(other.failed)
        self.explain += other.explain
        self.retry.update(other.retry)
        self.skipped += other.skipped


class ClaimGate:
    """Batches share the worker; a suspect listing has it to itself (a readers-writer lock).

    While a suspect is being tried nothing else is claimed, so if it takes the worker down again
    no innocent listing is counted with it.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._sharers = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive)
            self._sharers += 1
        try:
            yield
        finally:
            with self._condition:
                self._sharers -= 1
                self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive and self._sharers == 0)
            self._exclusive = True
        try:
            yield
        finally:
            with self._condition:
                self._exclusive = False
                self._condition.notify_all()


class EmbedPipeline:
    """What an embed worker keeps between batches: model, decode threads, HTTP client, suggestion model."""

    def __init__(self, settings: Settings, db: Database, backbone: Backbone, store: ObjectStore) -> None:
        self.settings = settings
        self.db = db
        self.backbone = backbone
        self.store = store
        self.http = http_client(settings)  # thread-safe; shared by the decode threads
        self.pool = ThreadPoolExecutor(settings.embed.decode_threads, thread_name_prefix="decode")
        self.gate = ClaimGate()
        self._suggestions: SuggestionModel | None = None

    def fetch(self, item: Claimed) -> bytes:
        return fetch_image_bytes(item.url, self.settings, self.store, self.http)

    def run(self, listing_ids: Sequence[int], retries: Mapping[int, int] | None = None) -> BatchReport:
        """Embed and suggest what is still queued of `listing_ids`; `retries`: earlier tries per listing."""
        report = BatchReport()
        ids = sorted(set(map(int, listing_ids)))
        fresh, suspects = until_available(lambda: split_suspects(self.db, ids), "reading the batch")
        report.skipped = sorted(set(ids) - set(fresh) - set(suspects))
        report.suspects = suspects
        if fresh:
            with self.gate.shared():
                self._process(fresh, retries or {}, report)
        for suspect in suspects:
            with self.gate.exclusive():
                self._process([suspect], retries or {}, report)
        return report

    def _process(self, ids: list[int], retries: Mapping[int, int], report: BatchReport) -> None:
        claimed = until_available(lambda: claim_listings(self.db, ids), "claiming listings")
        # A new title or seller category of a photo embedded already: scored, not embedded again.
        stored = until_available(
            lambda: embedded_already(self.db, self.backbone.backbone_id, claimed), "reading"
        )
        if stored:
            report.merge(until_available(lambda: self._rescore(claimed, stored), "re-scoring"))
            claimed = [c for c in claimed if c.listing_id not in stored]
        limit = self.settings.embed.max_attempts
        over = [c for c in claimed if c.attempts > limit]
        work = [c for c in claimed if c.attempts <= limit]
        started = time.perf_counter()
        try:
            prepared = prepare_batch(self.backbone, work, self.fetch, self.settings, self.pool)
            report.seconds["prepare"] += time.perf_counter() - started
            started = time.perf_counter()
            vectors = embed_prepared(self.backbone, prepared)
            report.seconds["forward"] += time.perf_counter() - started
        except Exception as error:
            # Not one photo's fault: the claims stay, so these come back as suspects and are
            # tried one at a time; the error is kept in case it is the last try.
            detail = f"{type(error).__name__}: {error}"
            until_available(
                lambda: record_last_error(self.db, [c.listing_id for c in work], detail), "recording"
            )
            raise
        started = time.perf_counter()
        outcome = until_available(lambda: self._write(prepared, vectors, over, retries), "writing the batch")
        report.seconds["write"] += time.perf_counter() - started
        report.merge(outcome)

    def _write(
        self,
        prepared: list[Prepared[Claimed]],
        vectors: np.ndarray,
        over: list[Claimed],
        retries: Mapping[int, int],
    ) -> BatchReport:
        """One transaction for the batch's outcome; safe to run again after a failed commit."""
        report = BatchReport()
        with self.db.transaction() as session:
            # A new photo posted while this batch worked on the old one: that listing's outcome
            # is discarded (its new message brings the new photo), under the listing's lock.
            current = still_current(session, [p.source for p in prepared] + over)
            report.skipped = sorted({p.source.listing_id for p in prepared} - current)
            kept = [
                (p, v)
                for p, v in zip(_with_tensor(prepared), vectors, strict=True)
                if p.source.listing_id in current
            ]
            good = [p for p, _ in kept]
            if kept:
                vectors = np.stack([v for _, v in kept])
            prepared = [p for p in prepared if p.source.listing_id in current]
            over = [c for c in over if c.listing_id in current]
            store_embeddings(session, self.backbone, good, vectors)
            self._suggest(session, good, vectors, report)
            for item in prepared:
                if item.error is not None:
                    self._settle_rejected(session, item.source, item.error, retries, report)
            for exhausted in over:
                reason = (
                    FailureReason.internal_error if exhausted.last_error else FailureReason.too_many_attempts
                )
                detail = f"gave up after {self.settings.embed.max_attempts} attempts: " + (
                    f"last error {exhausted.last_error}"
                    if exhausted.last_error
                    else "it took its worker down each time"
                )
                mark_failed(session, exhausted.listing_id, reason, detail)
                report.failed[exhausted.listing_id] = reason
        report.embedded = [p.source.listing_id for p in good]
        return report

    def _rescore(self, claimed: list[Claimed], stored: dict[int, np.ndarray]) -> BatchReport:
        report = BatchReport()
        with self.db.transaction() as session:
            current = still_current(session, [c for c in claimed if c.listing_id in stored])
            kept = [Prepared(c) for c in claimed if c.listing_id in current]
            report.skipped = sorted(set(stored) - current)
            if kept:
                self._suggest(session, kept, np.stack([stored[p.source.listing_id] for p in kept]), report)
                session.execute(
                    update(Listing).where(Listing.id.in_(sorted(current))).values(claimed_at=None)
                )
        return report

    def _suggest(
        self, session: Session, good: list[Prepared[Claimed]], vectors: np.ndarray, report: BatchReport
    ) -> None:
        """A suggestion under the current clustering, or `embedded` until the first one exists."""
        if not good:
            return
        ids = [p.source.listing_id for p in good]
        self._suggestions = load_suggestion_model(
            session, self.backbone.backbone_id, self.settings, cached=self._suggestions
        )
        if self._suggestions is None:
            session.execute(update(Listing).where(Listing.id.in_(ids)).values(status=ListingStatus.embedded))
            return
        # Each vector is of the photo just fetched: a score the refit cached for this listing
        # stands for it only if it was made from this revision's photo.
        rows = upsert_suggestions(
            session,
            self._suggestions,
            ids,
            vectors,
            self.settings,
            revisions={p.source.listing_id: p.source.revision for p in good},
        )
        report.suggested += [r.listing_id for r in rows]
        report.explain += explanation_wanted(rows, self.settings.explain.sample_rate)

    def _settle_rejected(
        self,
        session: Session,
        item: Claimed,
        error: ImageRejected,
        retries: Mapping[int, int],
        report: BatchReport,
    ) -> None:
        listing_id = item.listing_id
        final = error.fault == Fault.photo or (
            error.fault in (Fault.source, Fault.bug) and item.attempts >= self.settings.embed.max_attempts
        )
        if final:
            mark_failed(session, listing_id, error.reason, error.detail)
            report.failed[listing_id] = error.reason
            return
        values: dict[str, object] = {"claimed_at": None, "enqueued_at": None}
        if error.fault == Fault.ours:
            # Our own store being away is not the listing's doing: the try does not count.
            values["attempts"] = Listing.attempts - 1
        else:
            values["last_error"] = f"{error.reason}: {error.detail}"[:2000]
        session.execute(update(Listing).where(Listing.id == listing_id).values(**values))
        report.retry[listing_id] = retry_delay(retries.get(listing_id, 0))


def _with_tensor(prepared: Sequence[Prepared[Claimed]]) -> list[Prepared[Claimed]]:
    """The prepared photos that were embedded, in the order of their vectors."""
    return [p for p in prepared if p.tensor is not None]


def record_last_error(db: Database, listing_ids: Sequence[int], detail: str) -> None:
    if not listing_ids:
        return
    with db.transaction() as session:
        session.execute(
            update(Listing)
            .where(Listing.id.in_(listing_ids))
            .values(last_error=f"internal_error: {detail}"[:2000])
        )


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
            "revision": p.source.revision,
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
                "revision": statement.excluded.revision,
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
                "last_error": None,
                "claimed_at": None,
            }
            for p in prepared
        ],
    )


def mark_failed(session: Session, listing_id: int, reason: str, detail: str) -> None:
    session.execute(
        update(Listing)
        .where(Listing.id == listing_id)
        .values(
            status=ListingStatus.failed,
            failure_reason=str(reason),
            failure_detail=detail[:2000],
            claimed_at=None,
        )
    )
    record_events(session, [listing_id], LISTING_FAILED)
