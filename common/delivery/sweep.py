"""The sweep: what Postgres says is waiting and the broker may not hold, sent again.

It sends what was never marked sent (a publisher that died between commit and send) and,
when it finds the broker started again empty (a new Redis server identity, and the sweep's
mark gone with its data), everything that still waits. It never re-sends a message that is
merely slow: one that sits in a live worker's prefetch is the broker's to redeliver, should
that worker die (see `workers.batching`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Integer, Text, and_, cast, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.db import Database, keyset_chunks
from common.delivery.outbox import BROKER_IDENTITY, request_explanations, send_listings
from common.delivery.publisher import Publisher
from common.delivery.queues import EMBED_QUEUE, EMBED_TASK, EXPLAIN_QUEUE, EXPLAIN_TASK
from common.schema import BrokerState, Listing, ListingStatus, Suggestion
from common.settings import Settings

# Rows read and messages sent per step of a sweep: bounded memory at any backlog.
log = logging.getLogger(__name__)

# Beyond the visibility time-out, how long a message may take to move between the broker's
# records (list, worker, unacknowledged record) and be seen there: milliseconds in practice.
RECONCILE_MARGIN = 10.0
# Seconds between the two reads of the broker, far longer than a delivery's two steps take.
RECONCILE_REREAD_AFTER = 1.0
# Above this many waiting messages the broker is not scanned: a backlog explains any wait.
RECONCILE_SCAN_LIMIT = 50_000
# The `broker_state` row counting messages found lost and sent again.
RECONCILED_KEY = "reconciled_total"

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
    listings: int  # never marked sent, or lost with the broker, and sent now
    explanations: int
    # Marked sent long ago, not done, and held nowhere in the broker: lost in flight, sent again.
    reconciled: int = 0


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
    reconciled = 0 if reset else reconcile(db, publisher, settings)
    return SweepResult(reset, listings, explanations, reconciled)


def reconcile(db: Database, publisher: Publisher, settings: Settings) -> int:
    """Send again what was sent long ago, is still not done, and is held nowhere in the broker.

    A message can be lost between the broker and a worker (a worker killed after Redis handed it
    over and before the transport recorded it as unacknowledged), which neither the broker's
    redelivery nor the unsent sweep can see. Only what has waited longer than the visibility
    time-out plus a margin is looked for. The broker is read twice, a second apart, each read
    one snapshot of its lists and unacknowledged record, so a message between a worker's two
    steps of taking it is not taken for lost; Postgres is read again after the broker, so one
    a worker finished meanwhile is not either. Sending again is safe: every write is keyed on
    the listing's state (docs/reliability.md).
    """
    cutoff = datetime.now(UTC) - timedelta(seconds=settings.delivery.visibility_timeout + RECONCILE_MARGIN)
    listings, overlays = _waiting_since(db, cutoff)
    lost_listings = _not_held(publisher, listings, EMBED_QUEUE, EMBED_TASK)
    lost_overlays = _not_held(publisher, overlays, EXPLAIN_QUEUE, EXPLAIN_TASK)
    if lost_listings or lost_overlays:
        # Read Postgres again: one a worker finished (committed, then acknowledged) between the
        # first read and the broker's is in neither any more, and is not lost.
        still_listings, still_overlays = _waiting_since(db, cutoff)
        lost_listings &= still_listings
        lost_overlays &= still_overlays
    if lost_listings:
        log.warning("listings %s waited past the visibility time-out and no message holds them: sent again",
                    sorted(lost_listings))  # fmt: skip
        send_listings(db, publisher, sorted(lost_listings))
    if lost_overlays:
        log.warning("overlay requests %s were lost in the broker: asked again", sorted(lost_overlays))
        request_explanations(db, publisher, sorted(lost_overlays), settings)
    found = len(lost_listings) + len(lost_overlays)
    if found:
        _count_reconciled(db, found)
    return found


def _waiting_since(db: Database, cutoff: datetime) -> tuple[set[int], set[int]]:
    """Listings queued, and overlay requests unanswered, since before `cutoff` (the oldest first)."""
    with db.transaction() as session:
        listings = set(
            session.execute(
                select(Listing.id)
                .where(Listing.status == ListingStatus.queued, Listing.enqueued_at < cutoff)
                .order_by(Listing.enqueued_at)
                .limit(SWEEP_CHUNK)
            ).scalars()
        )
        overlays = set(
            session.execute(
                select(Suggestion.listing_id)
                .join(Listing, Listing.id == Suggestion.listing_id)
                .where(
                    Suggestion.explain_requested_at < cutoff,
                    Suggestion.overlay_key.is_(None),
                    Suggestion.explain_error.is_(None),
                    Listing.status == ListingStatus.suggested,
                )
                .order_by(Suggestion.explain_requested_at)
                .limit(SWEEP_CHUNK)
            ).scalars()
        )
    return listings, overlays


def _not_held(publisher: Publisher, candidates: set[int], queue: str, task: str) -> set[int]:
    if not candidates:
        return set()
    missing = set(candidates)
    for read in range(2):
        # Both reads must miss it: a worker takes a message from the list (BRPOP) and records it
        # as unacknowledged a moment later, and between the two it is in neither.
        if read:
            time.sleep(RECONCILE_REREAD_AFTER)
        held = publisher.listings_held(queue, task, RECONCILE_SCAN_LIMIT)
        if held is None:
            log.info(
                "%s queue holds more than %d messages: reconciliation waits", queue, RECONCILE_SCAN_LIMIT
            )
            return set()
        missing -= held
    return missing


def _count_reconciled(db: Database, found: int) -> None:
    with db.transaction() as session:
        statement = insert(BrokerState).values(key=RECONCILED_KEY, value=str(found))
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["key"],
                set_={"value": (cast(BrokerState.value, Integer) + found).cast(Text)},
            )
        )


def reconciled_total(session: Session) -> int:
    """Messages found lost in the broker and sent again, over the deployment's life."""
    row = session.get(BrokerState, RECONCILED_KEY)
    return int(row.value) if row is not None else 0


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
