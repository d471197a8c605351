"""Claims: which listings of a batch a try takes, and whether what it made is still wanted.

A listing is claimed (its attempt counted) before the work starts, so a photo that kills its
worker is known when its message comes back; its outcome is written only for the revision it
claimed (a new photo or text since makes it worthless).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.db import Database
from common.schema import Listing, ListingStatus


@dataclass(frozen=True)
class Claimed:
    listing_id: int
    url: str
    attempts: int
    last_error: str | None
    revision: int  # the listing's revision whose photo `url` is


def split_suspects(db: Database, listing_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """(fresh, suspects) among the listings still queued: a suspect is still claimed by a try that
    never finished, because its worker died."""
    if not listing_ids:
        return [], []
    with db.transaction() as session:
        rows = session.execute(
            select(Listing.id, Listing.claimed_at).where(
                Listing.id.in_(listing_ids), Listing.status == ListingStatus.queued
            )
        ).all()
    fresh = sorted(row[0] for row in rows if row[1] is None)
    suspects = sorted(row[0] for row in rows if row[1] is not None)
    return fresh, suspects


def claim_listings(db: Database, listing_ids: Sequence[int]) -> list[Claimed]:
    """Count an attempt for each listing still queued, and mark it claimed.

    Committed before the work starts, so a photo that kills its worker is seen as such when its
    message comes back, and given up on after `max_attempts` instead of retried forever.
    """
    if not listing_ids:
        return []
    with db.transaction() as session:
        rows = session.execute(
            update(Listing)
            .where(Listing.id.in_(listing_ids), Listing.status == ListingStatus.queued)
            .values(attempts=Listing.attempts + 1, claimed_at=datetime.now(UTC))
            .returning(Listing.id, Listing.image_url, Listing.attempts, Listing.last_error, Listing.revision)
        ).all()
    return [Claimed(row[0], row[1], row[2], row[3], row[4]) for row in rows]


def still_current(session: Session, claimed: Sequence[Claimed]) -> set[int]:
    """The claimed listings whose revision is still the one claimed, locked until the commit.

    The lock orders this write after (or before) a re-post's: a new photo committed first is
    seen here, and one committed after finds this batch's outcome written and replaces it.
    """
    if not claimed:
        return set()
    wanted = {(c.listing_id, c.revision) for c in claimed}
    rows = session.execute(
        select(Listing.id, Listing.revision)
        .where(Listing.id.in_(sorted({c.listing_id for c in claimed})))
        .order_by(Listing.id)
        .with_for_update()
    ).all()
    return {listing_id for listing_id, revision in rows if (listing_id, revision) in wanted}
