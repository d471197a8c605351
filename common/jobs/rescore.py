"""Listings whose photo is embedded already at their revision: a new title or seller category
(`PATCH`) is scored again from the stored vector, never by fetching and embedding the photo."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import and_, or_, select

from common.db import Database
from common.jobs.claims import Claimed
from common.schema import Embedding, Listing


def embedded_already(db: Database, backbone_id: str, claimed: Sequence[Claimed]) -> dict[int, np.ndarray]:
    """listing id → its stored vector, for the claimed listings whose embedding by this backbone
    is of their claimed revision and of the photo they still have."""
    if not claimed:
        return {}
    wanted = or_(
        *(and_(Embedding.listing_id == c.listing_id, Embedding.revision == c.revision) for c in claimed)
    )
    with db.transaction() as session:
        rows = session.execute(
            select(Embedding.listing_id, Embedding.vector)
            .join(Listing, Listing.id == Embedding.listing_id)
            .where(
                Embedding.backbone_id == backbone_id, wanted, Listing.image_sha256 == Embedding.image_sha256
            )
        ).all()
    return {int(listing_id): np.asarray(vector, dtype=np.float32) for listing_id, vector in rows}
