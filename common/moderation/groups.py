"""Groups: waiting items that look alike and share a suggestion, decided with one key.

The same product is often listed several times (sizes, colours, sellers), with photos that are
near-duplicates. Shown one by one, each costs the moderator a decision; shown as one group with
its thumbnails, one key decides all (each member still gets its own audit row and can be undone
alone). A member is a waiting item of the same clustering version, cluster and suggested
category whose embedding is within `SIMILARITY` (cosine) of the lead's.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.moderation.queue import Lease, skipped_by, take_lease, waiting
from common.schema import Embedding, Listing, ReviewLease, Suggestion

# Cosine similarity of pooled features above which two photos show the same product. On the 1047
# Flipkart photos (efficientnet_lite0), 47 have a neighbour above it, every one of the same
# category (re-listings: the same battery or USB hub photo under several model numbers); the
# median photo's nearest neighbour is at 0.67 (tests/e2e/common/moderation/test_look_alikes.py).
SIMILARITY = 0.9
# Members shown with one lead: more would not fit as thumbnails, nor be checked at a glance.
MAX_MEMBERS = 11
# Candidates compared with the lead, nearest category and cluster first (a bound on the work).
MAX_CANDIDATES = 500


def members_of(lead: np.ndarray, candidates: np.ndarray, similarity: float = SIMILARITY) -> np.ndarray:
    """Indices of the candidates close enough to the lead to be decided with it, nearest first."""
    if len(candidates) == 0:
        return np.zeros(0, dtype=int)
    scores = candidates @ lead
    close = np.flatnonzero(scores >= similarity)
    return close[np.argsort(-scores[close], kind="stable")][:MAX_MEMBERS]


def group(
    session: Session,
    moderator: str,
    lead: Lease,
    lease_seconds: int,
    exclude: Collection[str] = (),
) -> list[Lease]:
    """Lease to the moderator the waiting items that belong with `lead`; the members won.

    Items another moderator holds are left to them; those this moderator skipped too.
    """
    own = session.execute(
        select(
            Suggestion.category,
            Suggestion.cluster,
            Suggestion.clustering_version_id,
            Embedding.vector,
            Embedding.backbone_id,
        )
        .join(Embedding, Embedding.listing_id == Suggestion.listing_id)
        .where(Suggestion.listing_id == lead.listing_id)
        .order_by(Embedding.id.desc())
        .limit(1)
    ).first()
    if own is None or own.category is None:
        return []
    now = datetime.now(UTC)
    others_hold = select(ReviewLease.listing_id).where(
        ReviewLease.listing_id == Suggestion.listing_id,
        ReviewLease.expires_at > now,
        ReviewLease.moderator != moderator,
    )
    rows = session.execute(
        select(Suggestion.listing_id, Listing.external_id, Embedding.vector)
        .join(Listing, Listing.id == Suggestion.listing_id)
        .join(Embedding, Embedding.listing_id == Suggestion.listing_id)
        .where(
            *waiting(),
            Suggestion.category == own.category,
            Suggestion.cluster == own.cluster,
            Suggestion.clustering_version_id == own.clustering_version_id,
            Embedding.backbone_id == own.backbone_id,
            Suggestion.listing_id != lead.listing_id,
            ~others_hold.exists(),
            ~skipped_by(moderator).exists(),
            *([Listing.external_id.not_in(list(exclude))] if exclude else []),
        )
        .limit(MAX_CANDIDATES)
    ).all()
    if not rows:
        return []
    chosen = members_of(np.asarray(own.vector), np.stack([r.vector for r in rows]))
    expires = now + timedelta(seconds=lease_seconds)
    won: list[Lease] = []
    for index in chosen:
        row = rows[int(index)]
        # As in a claim: only where nobody else holds a live lease (one of ours is renewed).
        if take_lease(session, row.listing_id, moderator, now, expires, renew_own=True):
            won.append(Lease(row.listing_id, row.external_id, expires))
    return won
