"""What moderators did: the decision history and the dashboard's figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from common.moderation.labels import LABELLING, standing
from common.moderation.queue import waiting_counts
from common.schema import (
    ClusteringVersion,
    Listing,
    ModeratorDecision,
)

HISTORY_LIMIT = 200


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
    decided = (
        select(ModeratorDecision.listing_id)
        .where(ModeratorDecision.action.in_(LABELLING), standing())
        .distinct()
        .subquery()
    )
    from_moderators = session.execute(select(func.count()).select_from(decided)).scalar_one()
    from_sellers = session.execute(
        select(func.count())
        .select_from(Listing)
        .outerjoin(decided, decided.c.listing_id == Listing.id)
        .where(and_(Listing.seller_category.is_not(None), decided.c.listing_id.is_(None)))
    ).scalar_one()
    return {
        "waiting": waiting_counts(session),
        "decisions_per_hour": per_hour,
        "clustering_versions": versions,
        "current_clusters": clusters,
        "labels": {"moderators": from_moderators, "sellers": from_sellers},
    }
