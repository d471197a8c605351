"""What a marketplace or a moderator may read about one listing, and waiting for its outcome."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import literal, select, tuple_
from sqlalchemy.orm import Session

from common.moderation.decisions import decision_of, standing_decisions
from common.moderation.labels import label_expression
from common.schema import Embedding, Listing, ModeratorDecision, Source, Suggestion
from common.sources.registry import find_listing, source_names

MAX_WAIT = 30.0
# Between two looks at a listing awaited by a client (`?wait=`): each look is a short transaction.
WAIT_POLL = 0.2


def listing_view(session: Session, external_id: str, source_id: int | None = None) -> dict[str, Any] | None:
    """The listing's state, suggestion and standing decision; None when unknown.

    `source_id`: the caller's source (an ingest token), None for a moderator, who may read any
    source's listing (`AmbiguousListing` when several have this external id).
    `overlay_key` / `heatmap_key` are object keys; the caller turns them into URLs.
    """
    listing = find_listing(session, external_id, source_id)
    return None if listing is None else view_of(session, listing)


def view_of(session: Session, listing: Listing | int) -> dict[str, Any]:
    """`listing_view` of a listing row, or of the listing of this id."""
    if isinstance(listing, int):
        listing = session.get_one(Listing, listing)
    suggestion = session.execute(
        select(Suggestion).where(Suggestion.listing_id == listing.id)
    ).scalar_one_or_none()
    source = source_names(session, {listing.source_id})[listing.source_id]
    return _view(listing, source, suggestion, decision_of(session, listing.id))


@dataclass(frozen=True)
class ListingFilter:
    status: str | None = None
    needs_review: bool | None = None
    updated_since: datetime | None = None
    source_id: int | None = None  # None: every source's (a moderator's page)


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last listing's (updated_at, id), the order pages are read in."""

    updated_at: datetime
    listing_id: int

    def encode(self) -> str:
        raw = f"{self.updated_at.isoformat()}|{self.listing_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def decode(text: str) -> Cursor:
        """Raises ValueError for anything this app did not hand out."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            at, _, listing_id = raw.partition("|")
            return Cursor(datetime.fromisoformat(at), int(listing_id))
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError("not a cursor this API handed out") from error


def listing_page(
    session: Session, where: ListingFilter, after: Cursor | None, limit: int
) -> tuple[list[dict[str, Any]], Cursor | None]:
    """Up to `limit` listings in the order they were last changed (then id), after the cursor;
    and the cursor of the next page, None when this one is the last. A client that keeps the
    last cursor and asks again later gets what changed since (a status, a photo, a decision)."""
    query = (
        select(Listing, Source.name, Suggestion)
        .join(Source, Source.id == Listing.source_id)
        .outerjoin(Suggestion, Suggestion.listing_id == Listing.id)
    )
    if where.source_id is not None:
        query = query.where(Listing.source_id == where.source_id)
    if where.status is not None:
        query = query.where(Listing.status == where.status)
    if where.needs_review is not None:
        query = query.where(Suggestion.needs_review.is_(where.needs_review))
    if where.updated_since is not None:
        query = query.where(Listing.updated_at >= where.updated_since)
    if after is not None:
        query = query.where(
            tuple_(Listing.updated_at, Listing.id)
            > tuple_(literal(after.updated_at), literal(after.listing_id))
        )
    rows = session.execute(query.order_by(Listing.updated_at, Listing.id).limit(limit + 1)).all()
    page = rows[:limit]
    decisions = {d.listing_id: d for d in standing_decisions(session, [row[0].id for row in page])}
    views = [
        _view(listing, source, suggestion, decisions.get(listing.id)) for listing, source, suggestion in page
    ]
    last = page[-1][0] if page else None
    following = Cursor(last.updated_at, last.id) if last is not None and len(rows) > limit else None
    return views, following


def _view(
    listing: Listing, source: str, suggestion: Suggestion | None, decision: ModeratorDecision | None
) -> dict[str, Any]:
    return {
        "id": listing.id,
        "source": source,
        "external_id": listing.external_id,
        "status": listing.status,
        "title": listing.title,
        "image_url": listing.image_url,
        "seller_category": listing.seller_category,
        "failure_reason": listing.failure_reason,
        "failure_detail": listing.failure_detail,
        "updated_at": listing.updated_at.isoformat(),
        "suggestion": None
        if suggestion is None
        else {
            "category": suggestion.category,
            "confidence": suggestion.confidence,
            "alternatives": suggestion.alternatives,
            "needs_review": suggestion.needs_review,
            "review_reason": suggestion.review_reason,
            # Each signal's own top category and probability: "the photo says X, the title says Y".
            "signals": suggestion.signals or {},
            "cluster": suggestion.cluster,
            "clustering_version": suggestion.clustering_version_id,
            "overlay_key": suggestion.overlay_key,
            "heatmap_key": suggestion.heatmap_key,
            # Shown while the current decision's overlay is being made (see the schema).
            "previous_overlay_key": suggestion.previous_overlay_key,
            "previous_heatmap_key": suggestion.previous_heatmap_key,
            "previous_explain_target": suggestion.previous_explain_target,
        },
        "decision": None
        if decision is None
        else {
            "action": decision.action,
            "category": decision.category,
            "moderator": decision.moderator,
            "at": decision.created_at.isoformat(),
            "note": decision.note,
        },
    }


def labelled_neighbours(session: Session, listing_id: int, limit: int = 6) -> list[dict[str, Any]]:
    """The nearest already-labelled listings of the same cluster (same clustering version)."""
    own = session.execute(
        select(Suggestion.cluster, Suggestion.clustering_version_id, Suggestion.backbone_id).where(
            Suggestion.listing_id == listing_id
        )
    ).first()
    vector = session.execute(
        select(Embedding.vector)
        .where(Embedding.listing_id == listing_id)
        .order_by(Embedding.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if own is None or vector is None:
        return []
    label = label_expression().label("label")
    rows = session.execute(
        select(Listing.external_id, Listing.title, Listing.image_url, label, Embedding.vector)
        .join(Suggestion, Suggestion.listing_id == Listing.id)
        .join(Embedding, Embedding.listing_id == Listing.id)
        .where(
            Suggestion.cluster == own.cluster,
            Suggestion.clustering_version_id == own.clustering_version_id,
            Embedding.backbone_id == own.backbone_id,
            Listing.id != listing_id,
            label.is_not(None),
        )
        .limit(500)
    ).all()
    if not rows:
        return []
    similarity = np.stack([r.vector for r in rows]) @ np.asarray(vector)
    order = np.argsort(-similarity)[:limit]
    return [
        {
            "external_id": rows[i].external_id,
            "title": rows[i].title,
            "image_url": rows[i].image_url,
            "label": rows[i].label,
            "similarity": round(float(similarity[i]), 3),
        }
        for i in order
    ]


def category_examples(
    session: Session, listing_id: int, categories: list[str], per_category: int = 3
) -> dict[str, list[dict[str, Any]]]:
    """For each candidate category, the labelled listings of it that look most like this one.

    What a moderator compares the photo with before choosing between the top candidates. Among
    at most 300 labelled listings per category (same backbone), nearest first.
    """
    own = session.execute(
        select(Embedding.vector, Embedding.backbone_id)
        .where(Embedding.listing_id == listing_id)
        .order_by(Embedding.id.desc())
        .limit(1)
    ).first()
    if own is None or not categories:
        return {}
    label = label_expression().label("label")
    examples: dict[str, list[dict[str, Any]]] = {}
    for category in categories:
        rows = session.execute(
            select(Listing.external_id, Listing.title, Listing.image_url, Embedding.vector)
            .join(Embedding, Embedding.listing_id == Listing.id)
            .where(Embedding.backbone_id == own.backbone_id, Listing.id != listing_id, label == category)
            .limit(300)
        ).all()
        if not rows:
            continue
        similarity = np.stack([r.vector for r in rows]) @ np.asarray(own.vector)
        examples[category] = [
            {"external_id": rows[i].external_id, "title": rows[i].title, "image_url": rows[i].image_url}
            for i in np.argsort(-similarity)[:per_category]
        ]
    return examples
