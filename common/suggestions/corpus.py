"""Stored embeddings and their labels, read in bounded chunks (what refit and suggestions learn from)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.db import keyset_chunks
from common.moderation.labels import label_expression
from common.schema import ClusteringVersion, Embedding, Listing
from common.suggestions.scorers import LabelledSet


def iter_embeddings(
    session: Session, backbone_id: str, chunk: int, *, labelled_only: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str | None]]]:
    """(listing ids, unit vectors, labels) in chunks, by keyset pagination: bounded memory."""
    label = label_expression().label("label")
    query = (
        select(Embedding.id, Embedding.listing_id, Embedding.vector, label)
        .join(Listing, Listing.id == Embedding.listing_id)
        .where(Embedding.backbone_id == backbone_id)
    )
    if labelled_only:
        query = query.where(label.isnot(None))
    for _session, rows in keyset_chunks(session, query, Embedding.id, chunk):
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


@dataclass(frozen=True)
class ColdStart:
    """No clustering of the configured model yet: how many embedded listings have a label, of how many."""

    labelled: int
    needed: int

    @property
    def due(self) -> bool:
        return self.labelled >= self.needed

    @property
    def reason(self) -> str:
        """Why a listing has no suggestion yet, for the API."""
        return (
            f"no clustering yet: the first one is made once {self.needed} embedded listings have a "
            f"category ({self.labelled} so far)"
        )


def cold_start(session: Session, model_name: str, needed: int) -> ColdStart | None:
    """None once the model's newest backbone has a current clustering; else how far the first one is."""
    backbone_id = newest_backbone_id(session, model_name)
    if backbone_id is None:
        return ColdStart(0, needed)
    if current_version(session, backbone_id) is not None:
        return None
    labelled = session.execute(
        select(func.count())
        .select_from(Embedding)
        .join(Listing, Listing.id == Embedding.listing_id)
        .where(Embedding.backbone_id == backbone_id, label_expression().is_not(None))
    ).scalar_one()
    return ColdStart(int(labelled), needed)


def current_version(session: Session, backbone_id: str) -> ClusteringVersion | None:
    return session.execute(
        select(ClusteringVersion).where(
            ClusteringVersion.backbone_id == backbone_id, ClusteringVersion.is_current
        )
    ).scalar_one_or_none()


KNN_REFERENCE_LIMIT = 50_000


def labelled_set(
    session: Session, backbone_id: str, chunk: int, categories: list[str], limit: int = KNN_REFERENCE_LIMIT
) -> LabelledSet:
    """The labelled listings (at most `limit`) with their vectors, category indices and titles.

    Labels outside `categories` (newer than the clustering version) wait for the next refit.
    """
    index = {c: i for i, c in enumerate(categories)}
    ids: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    labels: list[int] = []
    titles: list[str | None] = []
    revisions: list[int] = []
    for chunk_ids, chunk_vectors, chunk_labels in iter_embeddings(
        session, backbone_id, chunk, labelled_only=True
    ):
        ids.append(chunk_ids)
        vectors.append(chunk_vectors)
        labels.extend(index.get(label, -1) if label is not None else -1 for label in chunk_labels)
        known: dict[int, tuple[str | None, int]] = {
            listing_id: (title, revision)
            for listing_id, title, revision in session.execute(
                select(Listing.id, Listing.title, Embedding.revision)
                .join(Embedding, Embedding.listing_id == Listing.id)
                .where(Listing.id.in_(chunk_ids.tolist()), Embedding.backbone_id == backbone_id)
            )
        }
        titles.extend(known[int(i)][0] for i in chunk_ids)
        # The photo's revision, not the listing's: a new photo not yet embedded is another one.
        revisions.extend(known[int(i)][1] for i in chunk_ids)
        if len(labels) >= limit:
            break
    if not ids:
        empty = np.zeros(0, dtype=np.int64)
        return LabelledSet(empty, np.zeros((0, 0), dtype=np.float32), empty, [])
    keep = np.array(labels[:limit], dtype=np.int64) >= 0
    return LabelledSet(
        np.concatenate(ids)[:limit][keep],
        np.concatenate(vectors)[:limit][keep],
        np.array(labels[:limit], dtype=np.int64)[keep],
        [title for title, kept in zip(titles[:limit], keep, strict=True) if kept],
        np.array(revisions[:limit], dtype=np.int64)[keep],
    )
