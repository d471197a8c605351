"""Getting work to the workers, with Postgres keeping the account: what was sent, what to send again.

Rows are committed before their message is sent, and marked sent after. The sweep sends what
was never marked (a publisher that died between the two) and, when it finds the broker started
again empty (a new Redis server identity, and the sweep's mark gone with its data), everything
that still waits. It never re-sends a message that is merely slow: one that sits in a live
worker's prefetch is the broker's to redeliver, should that worker die (see `workers.batching`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert

from common.db import Database
from common.delivery.publisher import Publisher
from common.delivery.queues import EXPLAIN_QUEUE
from common.jobs.refit import RefitResult
from common.object_store import STORAGE_ERRORS, ObjectStore
from common.schema import BrokerState, Listing, ListingStatus, Suggestion
from common.settings import Settings

log = logging.getLogger(__name__)

# Rows read and messages sent per step of a sweep: bounded memory at any backlog.
SWEEP_CHUNK = 5_000


BROKER_IDENTITY = "redis_run_id"


def broker_was_reset(db: Database, publisher: Publisher) -> bool:
    """Did the broker lose its messages since Postgres last saw it?

    A Redis server that started again has a new run id; one that kept its data on disk still
    holds the sweep's mark. The first broker ever seen is remembered, not taken for a reset:
    publishers remember it too, when they first send (`remember_broker`).
    """
    identity = publisher.broker_identity()
    kept = publisher.broker_kept_mark()
    with db.transaction() as session:
        seen = session.get(BrokerState, BROKER_IDENTITY, with_for_update=True)
        if seen is None:
            session.add(BrokerState(key=BROKER_IDENTITY, value=identity))
            return False
        if seen.value == identity:
            return False
        seen.value = identity
    return not kept


def remember_broker(db: Database, publisher: Publisher) -> None:
    """Note the broker's identity the first time this publisher sends (nothing if already known)."""
    if publisher.broker_noted:
        return
    identity = publisher.broker_identity()
    with db.transaction() as session:
        session.execute(
            insert(BrokerState)
            .values(key=BROKER_IDENTITY, value=identity)
            .on_conflict_do_nothing(index_elements=["key"])
        )
    publisher.broker_noted = True


def send_listings(
    db: Database,
    publisher: Publisher,
    listing_ids: Sequence[int],
    *,
    retry: int = 0,
    countdown: float | None = None,
) -> None:
    """Send embed messages for committed rows, then record that they were sent.

    `retry` > 0 marks a listing tried again after its photo could not be had, `countdown` its delay.
    """
    if not listing_ids:
        return
    remember_broker(db, publisher)
    publisher.embed(listing_ids, retry=retry, countdown=countdown)
    with db.transaction() as session:
        session.execute(
            update(Listing)
            .where(Listing.id.in_(list(listing_ids)), Listing.status == ListingStatus.queued)
            .values(enqueued_at=datetime.now(UTC))
        )


def request_explanations(
    db: Database, publisher: Publisher, listing_ids: Sequence[int], settings: Settings
) -> list[int]:
    """Ask the explain worker for overlays, as many as the explain queue has room for.

    Returns the ids asked for; the others keep `explain_requested_at` NULL, so a later sweep
    asks for them once the queue has drained.
    """
    if not listing_ids:
        return []
    room = max(0, settings.explain.queue_limit - publisher.queue_depth(EXPLAIN_QUEUE))
    asked = list(listing_ids)[:room]
    remember_broker(db, publisher)
    if len(asked) < len(listing_ids):
        log.warning("explain queue full: %d overlay requests wait in Postgres", len(listing_ids) - len(asked))
    if not asked:
        return []
    publisher.explain(asked)
    with db.transaction() as session:
        session.execute(
            update(Suggestion)
            .where(Suggestion.listing_id.in_(asked))
            .values(explain_requested_at=datetime.now(UTC))
        )
    return asked


def follow_up_refit(
    db: Database, publisher: Publisher, store: ObjectStore, settings: Settings, result: RefitResult
) -> None:
    """After a refit: overlays for the decisions that changed, and the old ones deleted."""
    request_explanations(db, publisher, result.explain, settings)
    if result.superseded:
        try:
            deleted = store.delete_keys(settings.store.overlay_bucket, result.superseded)
            log.info("deleted %d superseded overlay objects", deleted)
        except STORAGE_ERRORS as error:
            log.warning("superseded overlays not deleted: %s", error)


@dataclass(frozen=True)
class SweepResult:
    broker_reset: bool
    listings: int
    explanations: int


def sweep(db: Database, publisher: Publisher, settings: Settings) -> SweepResult:
    """Send what Postgres says is waiting and the broker may not hold (see the module docstring)."""
    reset = broker_was_reset(db, publisher)
    if reset:
        log.warning("the broker holds no Vitrine state: re-sending every waiting listing and overlay request")
    unsent_before = datetime.now(UTC) - timedelta(seconds=settings.delivery.requeue_after)
    listings = _resend_listings(db, publisher, everything=reset, unsent_before=unsent_before)
    explanations = _rerequest_explanations(
        db, publisher, settings, everything=reset, unsent_before=unsent_before
    )
    return SweepResult(reset, listings, explanations)


def _resend_listings(db: Database, publisher: Publisher, *, everything: bool, unsent_before: datetime) -> int:
    condition: ColumnElement[bool] = Listing.status == ListingStatus.queued
    if not everything:
        condition = and_(condition, Listing.enqueued_at.is_(None), Listing.updated_at < unsent_before)
    total, last_id = 0, 0
    while True:
        with db.transaction() as session:
            ids = list(
                session.execute(
                    select(Listing.id)
                    .where(condition, Listing.id > last_id)
                    .order_by(Listing.id)
                    .limit(SWEEP_CHUNK)
                ).scalars()
            )
        if not ids:
            return total
        send_listings(db, publisher, ids)
        total += len(ids)
        last_id = ids[-1]


def _rerequest_explanations(
    db: Database, publisher: Publisher, settings: Settings, *, everything: bool, unsent_before: datetime
) -> int:
    """Overlays asked for and lost with the broker, and flagged ones never asked for."""
    flagged_never_asked = and_(Suggestion.explain_requested_at.is_(None), Suggestion.needs_review)
    waiting: ColumnElement[bool] = (
        or_(flagged_never_asked, Suggestion.explain_requested_at.is_not(None))
        if everything
        else and_(flagged_never_asked, Suggestion.updated_at < unsent_before)
    )
    total, last_id = 0, 0
    while True:
        with db.transaction() as session:
            ids = list(
                session.execute(
                    select(Suggestion.listing_id)
                    .join(Listing, Listing.id == Suggestion.listing_id)
                    .where(
                        waiting,
                        Suggestion.overlay_key.is_(None),
                        Suggestion.explain_error.is_(None),
                        Listing.status == ListingStatus.suggested,
                        Suggestion.listing_id > last_id,
                    )
                    .order_by(Suggestion.listing_id)
                    .limit(SWEEP_CHUNK)
                ).scalars()
            )
        if not ids:
            return total
        asked = request_explanations(db, publisher, ids, settings)
        total += len(asked)
        if len(asked) < len(ids):
            # The queue is full: what was not asked for waits, marked as never asked, for a later sweep.
            with db.transaction() as session:
                session.execute(
                    update(Suggestion)
                    .where(Suggestion.listing_id.in_(sorted(set(ids) - set(asked))))
                    .values(explain_requested_at=None)
                )
            return total
        last_id = ids[-1]
