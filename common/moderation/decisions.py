"""Moderators' decisions: accept, override, skip and undo, each an audit row that is never changed.

An undo is a row of its own that names the decision it reverts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.moderation.labels import LABELLING, Action, standing
from common.moderation.queue import known_categories
from common.schema import (
    Listing,
    ListingStatus,
    ModeratorDecision,
    ReviewLease,
    Source,
    Suggestion,
)
from common.sources.registry import SourceError, ambiguous, candidates, source_id_named
from common.webhooks import LISTING_NEEDS_REVIEW, LISTING_REVIEWED
from common.webhooks.events import record_event

MAX_NOTE = 2000


class ReviewError(Exception):
    """A review request that cannot be done; `status` is its HTTP answer, `field` what was wrong."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        # Stable, for programs: which conflict it is (`already_decided_by_you` is a retry's).
        self.code = code or type(self).code


class NotFound(ReviewError):
    status = 404
    code = "listing_not_found"


class Conflict(ReviewError):
    status = 409
    code = "conflict"


class Invalid(ReviewError):
    status = 422
    code = "invalid"


def named_source(session: Session, source: str | None) -> int | None:
    """The id of the source a moderator named (None: any source); an unknown one is a 404."""
    if source is None:
        return None
    try:
        return source_id_named(session, source)
    except SourceError:
        raise NotFound(f"no source {source!r}", "source") from None


def _listing_for_update(session: Session, external_id: str, source_id: int | None, mine: Any) -> Listing:
    """The listing a moderator means by this external id, locked.

    Moderators work for every source: where several sources have a listing of this id and no
    source is named, the one `mine` selects (the moderator's claim, or their decision) is meant;
    if that does not tell them apart either, 409 `ambiguous_listing`.
    """
    found = candidates(session, external_id, source_id, for_update=True)
    if not found:
        raise NotFound(f"no listing {external_id!r}", "external_id")
    if len(found) > 1:
        theirs = set(session.execute(mine.where(Listing.id.in_([f.id for f in found]))).scalars())
        found = [listing for listing in found if listing.id in theirs] or found
    if len(found) > 1:
        raise Conflict(str(ambiguous(session, found)), "source", "ambiguous_listing")
    return found[0]


def decide(
    session: Session,
    moderator: str,
    external_id: str,
    action: str,
    category: str | None = None,
    note: str | None = None,
    source_id: int | None = None,
) -> ModeratorDecision:
    """Record the moderator's decision on an item they claimed; 409 (`Conflict`) when it is not theirs.

    `source_id`: the listing's source, where the external id alone does not say (any source's).
    """
    if action not in (Action.accept, Action.override, Action.skip):
        raise Invalid("action: must be accept, override or skip", "action")
    if note is not None and len(note) > MAX_NOTE:
        raise Invalid(f"note: at most {MAX_NOTE} characters", "note")
    claimed = select(Listing.id).where(
        ReviewLease.listing_id == Listing.id,
        ReviewLease.moderator == moderator,
        ReviewLease.expires_at > func.now(),
    )
    listing = _listing_for_update(session, external_id, source_id, claimed)
    suggestion = session.execute(
        select(Suggestion).where(Suggestion.listing_id == listing.id)
    ).scalar_one_or_none()
    if listing.status == ListingStatus.reviewed:
        prior = decision_of(session, listing.id)
        mine = prior is not None and prior.moderator == moderator
        by = "by you" if mine else "by another moderator"
        raise Conflict(
            f"listing {external_id!r} is already decided {by}",
            "external_id",
            "already_decided_by_you" if mine else "already_decided",
        )
    if suggestion is not None and suggestion.revision != listing.revision:
        # What the moderator looked at is a photo the seller has replaced since.
        raise Conflict(
            f"listing {external_id!r} has a new photo since it was claimed: it is scored again and "
            "comes back to the queue if it needs a moderator",
            "external_id",
            "photo_replaced",
        )
    if suggestion is None or not suggestion.needs_review:
        raise Conflict(f"listing {external_id!r} is not waiting for review", "external_id", "not_waiting")
    lease = session.get(ReviewLease, listing.id, with_for_update=True)
    # An expired lease of this moderator still counts while nobody else has claimed the item.
    if lease is not None and lease.moderator == moderator and lease.revision != listing.revision:
        raise Conflict(
            f"listing {external_id!r} has a new photo since you claimed it; claim it again to see it",
            "external_id",
            "photo_replaced",
        )
    if lease is None or lease.moderator != moderator:
        holder = "nobody" if lease is None else "another moderator"
        raise Conflict(
            f"listing {external_id!r} is claimed by {holder}; claim it first",
            "external_id",
            "not_claimed_by_you",
        )
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
        revision=listing.revision,
    )
    session.add(decision)
    session.execute(delete(ReviewLease).where(ReviewLease.listing_id == listing.id))
    if action != Action.skip:
        listing.status = ListingStatus.reviewed
        # Out of the queue's index: a claim never walks past decided items. The suggestion's
        # category, confidence and `review_reason` stay as the model made them.
        suggestion.needs_review = False
    session.flush()
    if action != Action.skip:  # a skip changes nothing a marketplace sees
        record_event(session, listing, LISTING_REVIEWED)
    return decision


def undo(
    session: Session, moderator: str, external_id: str, lease_seconds: int, source_id: int | None = None
) -> ModeratorDecision:
    """Revert the moderator's last standing decision on the item; the item is theirs again."""
    decided = select(Listing.id).where(
        ModeratorDecision.listing_id == Listing.id, ModeratorDecision.moderator == moderator, standing()
    )
    listing = _listing_for_update(session, external_id, source_id, decided)
    last = session.execute(
        select(ModeratorDecision)
        .where(
            ModeratorDecision.listing_id == listing.id,
            ModeratorDecision.action != Action.undo,
            standing(),
        )
        .order_by(ModeratorDecision.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if last is None or last.moderator != moderator:
        raise Conflict(
            f"listing {external_id!r}: you have no decision on it to undo", "external_id", "nothing_to_undo"
        )
    if last.revision != listing.revision:
        # The decision stopped counting with the new photo, which has work of its own pending:
        # undoing it now would put the old suggestion back in front of the new photo.
        raise Conflict(
            f"listing {external_id!r} has a new photo since your decision, which no longer applies: "
            "nothing to undo",
            "external_id",
            "photo_replaced",
        )
    if last.action != Action.skip:
        listing.status = ListingStatus.suggested
        session.execute(
            update(Suggestion).where(Suggestion.listing_id == listing.id).values(needs_review=True)
        )
    elif listing.status == ListingStatus.reviewed:
        raise Conflict(f"listing {external_id!r} was decided since your skip", "external_id", "decided_since")
    row = ModeratorDecision(
        listing_id=listing.id,
        action=Action.undo,
        category=last.suggested_category,
        suggested_category=last.category,
        confidence=last.confidence,
        clustering_version_id=last.clustering_version_id,
        moderator=moderator,
        reverts_id=last.id,
        revision=last.revision,
    )
    session.add(row)
    expires = datetime.now(UTC) + timedelta(seconds=lease_seconds)
    statement = insert(ReviewLease).values(
        listing_id=listing.id, moderator=moderator, expires_at=expires, revision=listing.revision
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["listing_id"],
            set_={"moderator": moderator, "expires_at": expires, "revision": listing.revision},
        )
    )
    session.flush()
    if last.action != Action.skip:  # the listing waits for a moderator again
        record_event(session, listing, LISTING_NEEDS_REVIEW)
    return row


def decision_of(session: Session, listing_id: int) -> ModeratorDecision | None:
    """The listing's standing accept or override of its current revision, if any."""
    return session.execute(
        select(ModeratorDecision)
        .join(Listing, Listing.id == ModeratorDecision.listing_id)
        .where(
            ModeratorDecision.listing_id == listing_id,
            ModeratorDecision.action.in_(LABELLING),
            ModeratorDecision.revision == Listing.revision,
            standing(),
        )
        .order_by(ModeratorDecision.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def standing_decisions(session: Session, listing_ids: list[int]) -> list[ModeratorDecision]:
    """`decision_of` for many listings in one query: each one's newest standing decision."""
    if not listing_ids:
        return []
    rows = session.execute(
        select(ModeratorDecision)
        .join(Listing, Listing.id == ModeratorDecision.listing_id)
        .where(
            ModeratorDecision.listing_id.in_(listing_ids),
            ModeratorDecision.action.in_(LABELLING),
            ModeratorDecision.revision == Listing.revision,
            standing(),
        )
        .order_by(ModeratorDecision.listing_id, ModeratorDecision.id.desc())
        .distinct(ModeratorDecision.listing_id)
    ).scalars()
    return list(rows)


def last_decision(session: Session, moderator: str) -> dict[str, Any] | None:
    """The moderator's newest decision that still stands (what `u` would undo)."""
    row = session.execute(
        select(ModeratorDecision, Listing.external_id, Listing.title, Source.name)
        .join(Listing, Listing.id == ModeratorDecision.listing_id)
        .join(Source, Source.id == Listing.source_id)
        .where(
            ModeratorDecision.moderator == moderator,
            ModeratorDecision.action != Action.undo,
            standing(),
        )
        .order_by(ModeratorDecision.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    decision, external_id, title, source = row
    return {
        "source": source,
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
            ModeratorDecision.action.in_(LABELLING),
            ModeratorDecision.created_at >= since,
            standing(),
        )
    ).scalar_one()
