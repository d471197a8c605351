"""The review queue: what waits for a moderator, and claims with leases (one item, one moderator)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.moderation.labels import Action, standing
from common.moderation.triage import priority
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


@dataclass(frozen=True)
class Filters:
    """What a moderator chose to review: one suggested category, one reason, a confidence range."""

    category: str | None = None
    reason: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None


ALL = Filters()


def waiting(filters: Filters = ALL) -> list[Any]:
    """Conditions of a suggestion that waits for a moderator (and matches the filters)."""
    conditions: list[Any] = [Suggestion.needs_review, Listing.status == ListingStatus.suggested]
    if filters.category is not None:
        conditions.append(Suggestion.category == filters.category)
    if filters.reason is not None:
        # Suggestions made before reasons existed wait for low confidence.
        conditions.append(func.coalesce(Suggestion.review_reason, "low_confidence") == filters.reason)
    if filters.min_confidence is not None:
        conditions.append(Suggestion.confidence >= filters.min_confidence)
    if filters.max_confidence is not None:
        conditions.append(Suggestion.confidence <= filters.max_confidence)
    return conditions


def skipped_by(moderator: str) -> Any:
    """Items this moderator skipped (and did not undo): someone else's to decide."""
    return select(ModeratorDecision.id).where(
        ModeratorDecision.listing_id == Suggestion.listing_id,
        ModeratorDecision.moderator == moderator,
        ModeratorDecision.action == Action.skip,
        standing(),
    )


def revision_of(listing_id: int) -> Any:
    """The listing's current revision, as a scalar subquery (what a new lease records)."""
    return select(Listing.revision).where(Listing.id == listing_id).scalar_subquery()


def waiting_in_order(filters: Filters = ALL, *conditions: Any, limit: int = 1) -> Select[Any]:
    """Waiting items in the order moderators get them (`triage.priority`, then the oldest listing)."""
    return (
        select(Suggestion.listing_id, Listing.external_id)
        .join(Listing, Listing.id == Suggestion.listing_id)
        .where(*waiting(filters), *conditions)
        .order_by(priority(), Suggestion.listing_id)
        .limit(limit)
    )


def claim(
    session: Session,
    moderator: str,
    lease_seconds: int,
    filters: Filters = ALL,
    exclude: Collection[str] = (),
) -> Lease | None:
    """The next item for this moderator (in `triage.priority` order) under a fresh lease, or None.

    An item the moderator already holds comes back first (a reloaded page keeps its item), unless
    it is in `exclude` (external ids the desk already shows or keeps ready). Rows another
    transaction is claiming are skipped, not waited for (`SKIP LOCKED`), and a lease is taken only
    where nobody holds a live one, so two moderators claiming at once get two different items.
    """
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=lease_seconds)
    shown = [Listing.external_id.not_in(list(exclude))] if exclude else []
    held = session.execute(
        select(ReviewLease.listing_id, Listing.external_id)
        .join(Listing, Listing.id == ReviewLease.listing_id)
        .join(Suggestion, Suggestion.listing_id == ReviewLease.listing_id)
        .where(ReviewLease.moderator == moderator, ReviewLease.expires_at > now, *waiting(filters), *shown)
        .order_by(priority(), Suggestion.listing_id)
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
    skipped = skipped_by(moderator)
    taken: list[int] = []
    for _ in range(CLAIM_TRIES):
        row = session.execute(
            waiting_in_order(
                filters, ~leased.exists(), ~skipped.exists(), Suggestion.listing_id.not_in(taken)
            ).with_for_update(of=Suggestion, skip_locked=True)
        ).first()
        if row is None:
            return None
        # The check above reads the snapshot its statement started with; a moderator who claimed
        # the item since then has already committed a lease that `take_lease` sees (and keeps).
        if take_lease(session, row.listing_id, moderator, now, expires):
            return Lease(row.listing_id, row.external_id, expires)
        taken.append(row.listing_id)
    return None


def take_lease(
    session: Session,
    listing_id: int,
    moderator: str,
    now: datetime,
    expires: datetime,
    *,
    renew_own: bool = False,
) -> bool:
    """Lease the item to the moderator only where nobody holds a live lease (with `renew_own`,
    nobody else); whether it was taken. The conflict clause sees leases committed after the
    caller's snapshot, so two moderators can never both win one item."""
    statement = insert(ReviewLease).values(
        listing_id=listing_id, moderator=moderator, expires_at=expires, revision=revision_of(listing_id)
    )
    free = ReviewLease.expires_at <= now
    won = session.execute(
        statement.on_conflict_do_update(
            index_elements=["listing_id"],
            set_={"moderator": moderator, "expires_at": expires, "revision": statement.excluded.revision},
            where=or_(free, ReviewLease.moderator == moderator) if renew_own else free,
        ).returning(ReviewLease.listing_id)
    ).first()
    return won is not None


def held(session: Session, moderator: str, external_id: str, source_id: int | None = None) -> Lease | None:
    """The moderator's live lease on this item (of this source, or of any), if they hold one."""
    of_source = [] if source_id is None else [Listing.source_id == source_id]
    row = session.execute(
        select(ReviewLease.listing_id, ReviewLease.expires_at)
        .join(Listing, Listing.id == ReviewLease.listing_id)
        .where(
            Listing.external_id == external_id,
            *of_source,
            ReviewLease.moderator == moderator,
            ReviewLease.expires_at > datetime.now(UTC),
        )
        .order_by(ReviewLease.expires_at.desc())
        .limit(1)
    ).first()
    return None if row is None else Lease(row.listing_id, external_id, row.expires_at)


def _held(moderator: str, external_ids: Collection[str]) -> Any:
    return ReviewLease.moderator == moderator, ReviewLease.listing_id.in_(
        select(Listing.id).where(Listing.external_id.in_(list(external_ids)))
    )


def renew(session: Session, moderator: str, external_ids: Collection[str], lease_seconds: int) -> int:
    """Extend the moderator's live leases on these items (the desk is still open); how many."""
    if not external_ids:
        return 0
    now = datetime.now(UTC)
    result = session.execute(
        update(ReviewLease)
        .where(*_held(moderator, external_ids), ReviewLease.expires_at > now)
        .values(expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def release(session: Session, moderator: str, external_ids: Collection[str]) -> int:
    """Give back the moderator's leases on these items (the desk closed, or its filters changed)."""
    if not external_ids:
        return 0
    statement = delete(ReviewLease).where(*_held(moderator, external_ids))
    result = session.execute(statement.execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


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


def waiting_counts(session: Session, moderator: str | None = None) -> dict[str, dict[str, int]]:
    """Items waiting for a moderator, per suggested category and per reason.

    With `moderator`, what waits for that moderator: the items they skipped are someone else's
    now, and counted apart (`skipped`).
    """
    per_category: dict[str, int] = {}
    per_reason: dict[str, int] = {}
    mine: list[Any] = [] if moderator is None else [~skipped_by(moderator).exists()]
    for category, reason, count in session.execute(
        select(Suggestion.category, Suggestion.review_reason, func.count())
        .join(Listing, Listing.id == Suggestion.listing_id)
        .where(*waiting(), *mine)
        .group_by(Suggestion.category, Suggestion.review_reason)
    ):
        key = category or "(none)"
        per_category[key] = per_category.get(key, 0) + count
        reason_key = reason or "low_confidence"
        per_reason[reason_key] = per_reason.get(reason_key, 0) + count
    counts = {"per_category": per_category, "per_reason": per_reason}
    if moderator is not None:
        skipped = session.execute(
            select(func.count())
            .select_from(Suggestion)
            .join(Listing, Listing.id == Suggestion.listing_id)
            .where(*waiting(), skipped_by(moderator).exists())
        ).scalar_one()
        counts["skipped"] = {"by_you": int(skipped)}
    return counts
