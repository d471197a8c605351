"""Stored embeddings and their labels, read in bounded chunks (what refit and suggestions learn from)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.moderation.labels import label_expression
from common.schema import ClusteringVersion, Embedding, Listing


def iter_embeddings(
    session: Session, backbone_id: str, chunk: int, *, labelled_only: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str | None]]]:
    """(listing ids, unit vectors, labels) in chunks, by keyset pagination: bounded memory."""
    label = label_expression().label("label")
    last_id = 0
    while True:
        query = (
            select(Embedding.id, Embedding.listing_id, Embedding.vector, label)
            .join(Listing, Listing.id == Embedding.listing_id)
            .where(Embedding.backbone_id == backbone_id, Embedding.id > last_id)
            .order_by(Embedding.id)
            .limit(chunk)
        )
        if labelled_only:
            query = query.where(label.isnot(None))
        rows = session.execute(query).all()
        if not rows:
            return
        last_id = rows[-1][0]
        yield (
            np.array([r[1] for r in rows], dtype=np.int64),
            np.stack([r[2] for r in rows]).astype(np.float32),
            [r[3] for r in rows],
        )


def newest_backbone_id(session: Session, model_name: str) -> str | None:
    """The backbone id of the configured model with the newest embeddings."""
    return session.execute(
        select(Embedding.backbone_id)
        .where(Embedding.backbone_id.startswith(model_name + "@"))
        .order_by(Embedding.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def current_version(session: Session, backbone_id: str) -> ClusteringVersion | None:
    return session.execute(
        select(ClusteringVersion).where(
            ClusteringVersion.backbone_id == backbone_id, ClusteringVersion.is_current
        )
    ).scalar_one_or_none()
