"""The sweep: what Postgres says is waiting and the broker may not hold, sent again.

It sends what was never marked sent (a publisher that died between commit and send) and,
when it finds the broker started again empty (a new Redis server identity, and the sweep's
mark gone with its data), everything that still waits. It never re-sends a message that is
merely slow: one that sits in a live worker's prefetch is the broker's to redeliver, should
that worker die (see `workers.batching`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update

from common.db import Database, keyset_chunks
from common.delivery.outbox import BROKER_IDENTITY, request_explanations, send_listings
from common.delivery.publisher import Publisher
from common.schema import BrokerState, Listing, ListingStatus, Suggestion
from common.settings import Settings

# Rows read and messages sent per step of a sweep: bounded memory at any backlog.
log = logging.getLogger(__name__)

SWEEP_CHUNK = 5_000


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
    total = 0
    waiting = select(Listing.id).where(condition)
    for _session, rows in keyset_chunks(db, waiting, Listing.id, SWEEP_CHUNK):
        ids = [row[0] for row in rows]
        send_listings(db, publisher, ids)
        total += len(ids)
    return total


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
    total = 0
    unexplained = (
        select(Suggestion.listing_id)
        .join(Listing, Listing.id == Suggestion.listing_id)
        .where(
            waiting,
            Suggestion.overlay_key.is_(None),
            Suggestion.explain_error.is_(None),
            Listing.status == ListingStatus.suggested,
        )
    )
    for _session, rows in keyset_chunks(db, unexplained, Suggestion.listing_id, SWEEP_CHUNK):
        ids = [row[0] for row in rows]
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
            break
    return total
