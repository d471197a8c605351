"""Moderators' review: the queue, claims with leases, decisions, undo, and the audit trail.

Every action is a `moderator_decision` row and no row is ever changed afterwards: an undo is a
row of its own that names the decision it reverts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, aliased

from common.schema import (
    ClusteringVersion,
    Listing,
    ListingStatus,
    ModeratorDecision,
    ReviewLease,
    Suggestion,
)

MAX_NOTE = 2000
HISTORY_LIMIT = 200


class Action(StrEnum):
    accept = "accept"  # the suggestion is right
    override = "override"  # another category is
    skip = "skip"  # not this moderator's call: back to the queue for someone else
    undo = "undo"  # reverts the moderator's previous decision on the item


class ReviewError(Exception):
    """A review request that cannot be done; `status` is its HTTP answer, `field` what was wrong."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(ReviewError):
    status = 404


class Conflict(ReviewError):
    status = 409


class Invalid(ReviewError):
    status = 422


@dataclass(frozen=True)
class Claimed:
    listing_id: int
    external_id: str
    expires_at: datetime


def _waiting(category: str | None = None) -> list[Any]:
    """Conditions of a suggestion that waits for a moderator."""
    conditions: list[Any] = [Suggestion.needs_review, Listing.status == ListingStatus.suggested]
    if category is not None:
        conditions.append(Suggestion.category == category)
    return conditions


def _not_reverted() -> Any:
    undo = aliased(ModeratorDecision)
    return ~select(undo.id).where(undo.reverts_id == ModeratorDecision.id).exists()


def claim(
    session: Session, moderator: str, lease_seconds: int, category: str | None = None
) -> Claimed | None:
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
        return Claimed(held.listing_id, held.external_id, expires)

    leased = select(ReviewLease.listing_id).where(
        ReviewLease.listing_id == Suggestion.listing_id, ReviewLease.expires_at > now
    )
    # Skipped by this moderator (and not undone): someone else's to decide.
    skipped = select(ModeratorDecision.id).where(
        ModeratorDecision.listing_id == Suggestion.listing_id,
        ModeratorDecision.moderator == moderator,
        ModeratorDecision.action == Action.skip,
        _not_reverted(),
    )
    row = session.execute(
        select(Suggestion.listing_id, Listing.external_id)
        .join(Listing, Listing.id == Suggestion.listing_id)
        .where(*_waiting(category), ~leased.exists(), ~skipped.exists())
        .order_by(Suggestion.confidence, Suggestion.listing_id)
        .limit(1)
        .with_for_update(of=Suggestion, skip_locked=True)
    ).first()
    if row is None:
        return None
    statement = insert(ReviewLease).values(listing_id=row.listing_id, moderator=moderator, expires_at=expires)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["listing_id"], set_={"moderator": moderator, "expires_at": expires}
        )
    )
    return Claimed(row.listing_id, row.external_id, expires)


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


def _listing_for_update(session: Session, external_id: str) -> Listing:
    listing = session.execute(
        select(Listing).where(Listing.external_id == external_id).with_for_update()
    ).scalar_one_or_none()
    if listing is None:
        raise NotFound(f"no listing {external_id!r}", "external_id")
    return listing


def decide(
    session: Session,
    moderator: str,
    external_id: str,
    action: str,
    category: str | None = None,
    note: str | None = None,
) -> ModeratorDecision:
    """Record the moderator's decision on an item they claimed; 409 (`Conflict`) when it is not theirs."""
    if action not in (Action.accept, Action.override, Action.skip):
        raise Invalid("action: must be accept, override or skip", "action")
    if note is not None and len(note) > MAX_NOTE:
        raise Invalid(f"note: at most {MAX_NOTE} characters", "note")
    listing = _listing_for_update(session, external_id)
    suggestion = session.execute(
        select(Suggestion).where(Suggestion.listing_id == listing.id)
    ).scalar_one_or_none()
    if listing.status == ListingStatus.reviewed:
        raise Conflict(f"listing {external_id!r} is already decided", "external_id")
    if suggestion is None or not suggestion.needs_review:
        raise Conflict(f"listing {external_id!r} is not waiting for review", "external_id")
    lease = session.get(ReviewLease, listing.id, with_for_update=True)
    # An expired lease of this moderator still counts while nobody else has claimed the item.
    if lease is None or lease.moderator != moderator:
        holder = "nobody" if lease is None else "another moderator"
        raise Conflict(f"listing {external_id!r} is claimed by {holder}; claim it first", "external_id")
    if action == Action.accept:
        if suggestion.category is None:
            raise Invalid("category: the suggestion names no category; override instead", "category")
        category = suggestion.category
    elif action == Action.override:
        if not category:
            raise Invalid("category: required to override", "category")
        if category not in known_categories(session):
            raise Invalid(f"category: unknown category {category!r}", "category")
    else:
        category = None
    decision = ModeratorDecision(
        listing_id=listing.id,
        action=action,
        category=category,
        suggested_category=suggestion.category,
        confidence=suggestion.confidence,
        clustering_version_id=suggestion.clustering_version_id,
        moderator=moderator,
        note=note or None,
    )
    session.add(decision)
    session.execute(delete(ReviewLease).where(ReviewLease.listing_id == listing.id))
    if action != Action.skip:
        listing.status = ListingStatus.reviewed
        # Out of the queue's index: a claim never walks past decided items. The suggestion's
        # category, confidence and `review_reason` stay as the model made them.
        suggestion.needs_review = False
    session.flush()
    return decision


def undo(session: Session, moderator: str, external_id: str, lease_seconds: int) -> ModeratorDecision:
    """Revert the moderator's last standing decision on the item; the item is theirs again."""
    listing = _listing_for_update(session, external_id)
    last = session.execute(
        select(ModeratorDecision)
        .where(
            ModeratorDecision.listing_id == listing.id,
            ModeratorDecision.action != Action.undo,
            _not_reverted(),
        )
        .order_by(ModeratorDecision.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if last is None or last.moderator != moderator:
        raise Conflict(f"listing {external_id!r}: you have no decision on it to undo", "external_id")
    if last.action != Action.skip:
        listing.status = ListingStatus.suggested
        session.execute(
            update(Suggestion).where(Suggestion.listing_id == listing.id).values(needs_review=True)
        )
    elif listing.status == ListingStatus.reviewed:
        raise Conflict(f"listing {external_id!r} was decided since your skip", "external_id")
    row = ModeratorDecision(
        listing_id=listing.id,
        action=Action.undo,
        category=last.suggested_category,
        suggested_category=last.category,
        confidence=last.confidence,
        clustering_version_id=last.clustering_version_id,
        moderator=moderator,
        reverts_id=last.id,
    )
    session.add(row)
    expires = datetime.now(UTC) + timedelta(seconds=lease_seconds)
    statement = insert(ReviewLease).values(listing_id=listing.id, moderator=moderator, expires_at=expires)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["listing_id"], set_={"moderator": moderator, "expires_at": expires}
        )
    )
    session.flush()
    return row


def history(
    session: Session,
    moderator: str | None = None,
    category: str | None = None,
    limit: int = HISTORY_LIMIT,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """Decision rows, newest first; `category` matches what was decided or what was suggested."""
    undo_row = aliased(ModeratorDecision)
    query = (
        select(ModeratorDecision, Listing.external_id, Listing.title, undo_row.id)
        .join(Listing, Listing.id == ModeratorDecision.listing_id)
        .outerjoin(undo_row, undo_row.reverts_id == ModeratorDecision.id)
        .order_by(ModeratorDecision.id.desc())
        .limit(limit)
    )
    if moderator:
        query = query.where(ModeratorDecision.moderator == moderator)
    if category:
        query = query.where(
            or_(ModeratorDecision.category == category, ModeratorDecision.suggested_category == category)
        )
    if before_id is not None:
        query = query.where(ModeratorDecision.id < before_id)
    return [
        {
            "id": d.id,
            "external_id": external_id,
            "title": title,
            "moderator": d.moderator,
            "action": d.action,
            "from": d.suggested_category,
            "to": d.category,
            "confidence": d.confidence,
            "clustering_version": d.clustering_version_id,
            "note": d.note,
            "reverts": d.reverts_id,
            "reverted_by": reverted_by,
            "at": d.created_at.isoformat(),
        }
        for d, external_id, title, reverted_by in session.execute(query)
    ]


def decision_of(session: Session, listing_id: int) -> ModeratorDecision | None:
    """The listing's standing accept or override, if any."""
    return session.execute(
        select(ModeratorDecision)
        .where(
            ModeratorDecision.listing_id == listing_id,
            ModeratorDecision.action.in_((Action.accept, Action.override)),
            _not_reverted(),
        )
        .order_by(ModeratorDecision.id.desc())
        .limit(1)
    ).scalar_one_or_none()


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


def stats(session: Session, hours: int = 48) -> dict[str, Any]:
    """What the dashboard shows (queue depths of the broker are added by the caller)."""
    since = datetime.now(UTC) - timedelta(hours=hours)
    hour = func.date_trunc("hour", ModeratorDecision.created_at)
    per_hour = [
        {"hour": at.isoformat(), "action": action, "count": count}
        for at, action, count in session.execute(
            select(hour, ModeratorDecision.action, func.count())
            .where(ModeratorDecision.created_at >= since)
            .group_by(hour, ModeratorDecision.action)
            .order_by(hour)
        )
    ]
    versions = [
        {
            "id": v.id,
            "created_at": v.created_at.isoformat(),
            "k": v.k,
            "ari": v.ari,
            "nmi": v.nmi,
            "stability_ari": v.stability_ari,
            "threshold": v.threshold,
            "target_precision": v.target_precision,
            "estimated_precision": v.estimated_precision,
            "estimated_coverage": v.estimated_coverage,
            "n_vectors": v.n_vectors,
            "n_labelled": v.n_labelled,
            "is_current": v.is_current,
        }
        for v in session.execute(select(ClusteringVersion).order_by(ClusteringVersion.id)).scalars()
    ]
    current = session.execute(
        select(ClusteringVersion.id, ClusteringVersion.sizes, ClusteringVersion.cluster_categories)
        .where(ClusteringVersion.is_current)
        .order_by(ClusteringVersion.id.desc())
        .limit(1)
    ).first()
    clusters = (
        [
            {"cluster": i, "size": size, "category": (cats[i] if i < len(cats) else {}).get("category")}
            for i, size in enumerate(current.sizes)
            for cats in [current.cluster_categories or []]
        ]
        if current is not None
        else []
    )
    standing = (
        select(ModeratorDecision.listing_id)
        .where(ModeratorDecision.action.in_((Action.accept, Action.override)), _not_reverted())
        .distinct()
        .subquery()
    )
    from_moderators = session.execute(select(func.count()).select_from(standing)).scalar_one()
    from_sellers = session.execute(
        select(func.count())
        .select_from(Listing)
        .outerjoin(standing, standing.c.listing_id == Listing.id)
        .where(and_(Listing.seller_category.is_not(None), standing.c.listing_id.is_(None)))
    ).scalar_one()
    return {
        "waiting": waiting_counts(session),
        "decisions_per_hour": per_hour,
        "clustering_versions": versions,
        "current_clusters": clusters,
        "labels": {"moderators": from_moderators, "sellers": from_sellers},
    }


def last_decision(session: Session, moderator: str) -> dict[str, Any] | None:
    """The moderator's newest decision that still stands (what `u` would undo)."""
    row = session.execute(
        select(ModeratorDecision, Listing.external_id, Listing.title)
        .join(Listing, Listing.id == ModeratorDecision.listing_id)
        .where(
            ModeratorDecision.moderator == moderator,
            ModeratorDecision.action != Action.undo,
            _not_reverted(),
        )
        .order_by(ModeratorDecision.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    decision, external_id, title = row
    return {
        "external_id": external_id,
        "title": title,
        "action": decision.action,
        "category": decision.category,
    }


def decided_since(session: Session, moderator: str, since: datetime) -> int:
    """Accepts and overrides of the moderator since `since` that still stand."""
    return session.execute(
        select(func.count())
        .select_from(ModeratorDecision)
        .where(
            ModeratorDecision.moderator == moderator,
            ModeratorDecision.action.in_((Action.accept, Action.override)),
            ModeratorDecision.created_at >= since,
            _not_reverted(),
        )
    ).scalar_one()
