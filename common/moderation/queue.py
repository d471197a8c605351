"""The review queue: what waits for a moderator, and claims with leases (one item, one moderator)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.moderation.labels import Action, standing
from common.schema import (
    ClusteringVersion,
    Listing,
    ListingStatus,
    ModeratorDecision,
    ReviewLease,
    Suggestion,
)


@dataclass(frozen=True)
class Lease:
    listing_id: int
    external_id: str
    expires_at: datetime


# Items tried per claim when others take them first (each try skips what it lost).
CLAIM_TRIES = 8


def _waiting(category: str | None = None) -> list[Any]:
    """Conditions of a suggestion that waits for a moderator."""
    conditions: list[Any] = [Suggestion.needs_review, Listing.status == ListingStatus.suggested]
    if category is not None:
        conditions.append(Suggestion.category == category)
    return conditions


def claim(session: Session, moderator: str, lease_seconds: int, category: str | None = None) -> Lease | None:
    """The next item for this moderator (lowest confidence first) under a fresh lease, or None.

    An item the moderator already holds comes back first (a reloaded page keeps its item). Rows
    another transaction is claiming are skipped, not waited for (`SKIP LOCKED`), so two moderators
    claiming at once get two different items.
    """
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=lease_seconds)
    held = session.execute(
        select(ReviewLease.listing_id, Listing.external_id)
        .join(Listing, Listing.id == ReviewLease.listing_id)
        .join(Suggestion, Suggestion.listing_id == ReviewLease.listing_id)
        .where(ReviewLease.moderator == moderator, ReviewLease.expires_at > now, *_waiting(category))
        .order_by(Suggestion.confidence)
        .limit(1)
        .with_for_update(of=ReviewLease)
    ).first()
    if held is not None:
        session.execute(
            update(ReviewLease).where(ReviewLease.listing_id == held.listing_id).values(expires_at=expires)
        )
        return Lease(held.listing_id, held.external_id, expires)

    leased = select(ReviewLease.listing_id).where(
        ReviewLease.listing_id == Suggestion.listing_id, ReviewLease.expires_at > now
    )
    # Skipped by this moderator (and not undone): someone else's to decide.
    skipped = select(ModeratorDecision.id).where(
        ModeratorDecision.listing_id == Suggestion.listing_id,
        ModeratorDecision.moderator == moderator,
        ModeratorDecision.action == Action.skip,
        standing(),
    )
    taken: list[int] = []
    for _ in range(CLAIM_TRIES):
        row = session.execute(
            select(Suggestion.listing_id, Listing.external_id)
            .join(Listing, Listing.id == Suggestion.listing_id)
            .where(
                *_waiting(category), ~leased.exists(), ~skipped.exists(), Suggestion.listing_id.not_in(taken)
            )
            .order_by(Suggestion.confidence, Suggestion.listing_id)
            .limit(1)
            .with_for_update(of=Suggestion, skip_locked=True)
        ).first()
        if row is None:
            return None
        # The lease is taken only if nobody holds a live one: the check above reads the snapshot
        # its statement started with, and a moderator who claimed the item since then has
        # already committed a lease that the conflict clause sees (and keeps).
        statement = insert(ReviewLease).values(
            listing_id=row.listing_id, moderator=moderator, expires_at=expires
        )
        won = session.execute(
            statement.on_conflict_do_update(
                index_elements=["listing_id"],
                set_={"moderator": moderator, "expires_at": expires},
                where=ReviewLease.expires_at <= now,
            ).returning(ReviewLease.listing_id)
        ).first()
        if won is not None:
            return Lease(row.listing_id, row.external_id, expires)
        taken.append(row.listing_id)
    return None


def known_categories(session: Session) -> set[str]:
    """Categories a decision may name: those sellers used and those the clusterings learned."""
    known = {
        c
        for c in session.execute(
            select(Listing.seller_category).where(Listing.seller_category.is_not(None)).distinct()
        ).scalars()
        if c
    }
    for clusters in session.execute(
        select(ClusteringVersion.cluster_categories).where(ClusteringVersion.is_current)
    ).scalars():
        for cluster in clusters or []:
            known.update(cluster.get("counts", {}))
            if cluster.get("category"):
                known.add(cluster["category"])
    known.update(
        c
        for c in session.execute(
            select(ModeratorDecision.category)
            .where(ModeratorDecision.action == Action.override, ModeratorDecision.category.is_not(None))
            .distinct()
        ).scalars()
        if c
    )
    return known


def waiting_counts(session: Session) -> dict[str, dict[str, int]]:
    """Items waiting for a moderator, per suggested category and per reason."""
    per_category: dict[str, int] = {}
    per_reason: dict[str, int] = {}
    for category, reason, count in session.execute(
        select(Suggestion.category, Suggestion.review_reason, func.count())
        .join(Listing, Listing.id == Suggestion.listing_id)
        .where(*_waiting())
        .group_by(Suggestion.category, Suggestion.review_reason)
    ):
        key = category or "(none)"
        per_category[key] = per_category.get(key, 0) + count
        reason_key = reason or "low_confidence"
        per_reason[reason_key] = per_reason.get(reason_key, 0) + count
    return {"per_category": per_category, "per_reason": per_reason}
