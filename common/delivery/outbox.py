"""Getting work to the workers, with Postgres keeping the account: rows are committed before
their message is sent, and marked sent after (the sweep sends what was never marked).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert

from common.db import Database
from common.delivery.publisher import Publisher
from common.delivery.queues import EXPLAIN_QUEUE
from common.schema import BrokerState, Listing, ListingStatus, Suggestion
from common.settings import Settings

log = logging.getLogger(__name__)

# The `broker_state` row that names the Redis server Postgres last saw.
BROKER_IDENTITY = "redis_run_id"


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
