"""Clustering versions: refit KMeans on stored embeddings, switch versions, (re)assign suggestions."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sqlalchemy import ColumnElement, case, func, null, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.config import Settings
from common.db import get_engine, session_scope
from common.models import (
    ClusteringVersion,
    Embedding,
    Listing,
    ListingStatus,
    ModeratorDecision,
    Suggestion,
)
from common.suggest import SuggestionModel, cluster_label_shares

log = logging.getLogger(__name__)

# Arbitrary constant naming the refit lock among Postgres advisory locks.
REFIT_LOCK_KEY = 0x56495452  # "VITR"
KNN_REFERENCE_LIMIT = 50_000
UPSERT_ROWS = 1_000


@dataclass(frozen=True)
class SuggestionRow:
    listing_id: int
    category: str | None
    confidence: float
    needs_review: bool


@dataclass(frozen=True)
class RefitResult:
    version_id: int | None
    backbone_id: str | None
    k: int
    n_vectors: int
    n_labelled: int
    ari: float | None
    nmi: float | None
    stability_ari: float | None
    fit_seconds: float
    suggested: int
    explain: list[int]
    skipped_reason: str | None = None


def label_expression() -> ColumnElement[str | None]:
    """A listing's label: the newest moderator decision, else the seller's category."""
    decision = (
        select(ModeratorDecision.category)
        .where(
            ModeratorDecision.listing_id == Listing.id,
            ModeratorDecision.action.in_(("accept", "override")),
        )
        .order_by(ModeratorDecision.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return func.coalesce(decision, Listing.seller_category)


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


def current_backbone_id(session: Session, model_name: str) -> str | None:
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


def build_suggestion_model(
    session: Session, version: ClusteringVersion, settings: Settings
) -> SuggestionModel:
    categories = sorted({c for cluster in version.cluster_categories for c in cluster["counts"]})
    index = {c: i for i, c in enumerate(categories)}
    shares = np.zeros((version.k, len(categories)))
    for i, cluster in enumerate(version.cluster_categories):
        total = sum(cluster["counts"].values())
        for category, n in cluster["counts"].items():
            shares[i, index[category]] = n / total
    model = SuggestionModel(
        version_id=version.id,
        backbone_id=version.backbone_id,
        centroids=version.centroid_matrix(),
        categories=categories,
        cluster_shares=shares,
        method=settings.suggestion_method,
        temperature=settings.centroid_temperature,
        neighbours=settings.knn_neighbours,
    )
    if settings.suggestion_method == "knn" and categories:
        vectors, labels = [], []
        for _ids, chunk, chunk_labels in iter_embeddings(
            session, version.backbone_id, settings.refit_chunk, labelled_only=True
        ):
            vectors.append(chunk)
            labels.extend(index.get(label, -1) for label in chunk_labels)  # type: ignore[arg-type]
            if len(labels) >= KNN_REFERENCE_LIMIT:
                break
        if vectors:
            reference = np.concatenate(vectors)[:KNN_REFERENCE_LIMIT]
            label_array = np.array(labels[:KNN_REFERENCE_LIMIT])
            keep = label_array >= 0  # labels newer than the version's categories wait a refit
            model.reference_vectors = reference[keep]
            model.reference_labels = label_array[keep]
    return model


def load_suggestion_model(
    session: Session, backbone_id: str, settings: Settings, cached: SuggestionModel | None = None
) -> SuggestionModel | None:
    """The suggestion model of the current version; the cached one while it is still current."""
    version_id = session.execute(
        select(ClusteringVersion.id).where(
            ClusteringVersion.backbone_id == backbone_id, ClusteringVersion.is_current
        )
    ).scalar_one_or_none()
    if version_id is None:
        return None
    if cached is not None and cached.version_id == version_id:
        return cached
    version = session.get(ClusteringVersion, version_id)
    assert version is not None
    return build_suggestion_model(session, version, settings)


def sampled_for_explanation(listing_id: int, rate: float) -> bool:
    """A stable pseudo-random share of confident suggestions is explained too (for audits)."""
    if rate <= 0:
        return False
    bucket = int(hashlib.sha256(str(listing_id).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < rate


def upsert_suggestions(
    session: Session,
    model: SuggestionModel,
    listing_ids: Sequence[int],
    vectors: np.ndarray,
    settings: Settings,
) -> list[SuggestionRow]:
    """Suggest for these listings under `model`; listings a moderator decided are left alone."""
    if not len(listing_ids):
        return []
    reviewed = set(
        session.execute(
            select(Listing.id).where(
                Listing.id.in_(list(map(int, listing_ids))),
                Listing.status == ListingStatus.reviewed,
            )
        ).scalars()
    )
    rows, results = [], []
    for listing_id, scored in zip(listing_ids, model.score(vectors), strict=True):
        listing_id = int(listing_id)
        if listing_id in reviewed:
            continue
        needs_review = scored.category is None or scored.confidence < settings.confidence_threshold
        rows.append(
            {
                "listing_id": listing_id,
                "clustering_version_id": model.version_id,
                "backbone_id": model.backbone_id,
                "cluster": scored.cluster,
                "category": scored.category,
                "confidence": round(scored.confidence, 6),
                "alternatives": scored.alternatives,
                "method": model.method,
                "needs_review": needs_review,
            }
        )
        results.append(SuggestionRow(listing_id, scored.category, scored.confidence, needs_review))
    if not rows:
        return []
    # One statement per slice: Postgres accepts at most 65535 bind parameters per statement.
    for start in range(0, len(rows), UPSERT_ROWS):
        _upsert_rows(session, rows[start : start + UPSERT_ROWS])
    return results


def _upsert_rows(session: Session, rows: list[dict[str, object]]) -> None:
    statement = insert(Suggestion).values(rows)
    changed_version = Suggestion.clustering_version_id != statement.excluded.clustering_version_id
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["listing_id"],
            set_={
                "clustering_version_id": statement.excluded.clustering_version_id,
                "backbone_id": statement.excluded.backbone_id,
                "cluster": statement.excluded.cluster,
                "category": statement.excluded.category,
                "confidence": statement.excluded.confidence,
                "alternatives": statement.excluded.alternatives,
                "method": statement.excluded.method,
                "needs_review": statement.excluded.needs_review,
                "updated_at": func.now(),
                # An explanation belongs to one clustering version; a new version needs a new one.
                "gradcam_key": _keep_unless(changed_version, Suggestion.gradcam_key),
                "heatmap_key": _keep_unless(changed_version, Suggestion.heatmap_key),
                "gradcam_target": _keep_unless(changed_version, Suggestion.gradcam_target),
            },
        )
    )
    session.execute(
        update(Listing)
        .where(
            Listing.id.in_([r["listing_id"] for r in rows]),
            Listing.status.in_((ListingStatus.queued, ListingStatus.embedded, ListingStatus.suggested)),
        )
        .values(status=ListingStatus.suggested)
    )


def _keep_unless(condition: ColumnElement[bool], column: ColumnElement[Any]) -> ColumnElement[Any]:
    return case((condition, null()), else_=column)


@contextmanager
def refit_lock() -> Iterator[bool]:
    """Postgres advisory lock held on its own connection for the whole refit.

    Two beats, or a beat and `vitrine refit`, can never refit at once; a crashed refit
    releases the lock with its connection.
    """
    with get_engine().connect() as connection:
        acquired = bool(
            connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": REFIT_LOCK_KEY}).scalar()
        )
        try:
            yield acquired
        finally:
            if acquired:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": REFIT_LOCK_KEY})
            connection.commit()


def _fit_centroids(
    session: Session, backbone_id: str, n: int, k: int, settings: Settings
) -> tuple[np.ndarray, str]:
    if n <= settings.refit_max_vectors:
        vectors = np.concatenate(
            [v for _ids, v, _labels in iter_embeddings(session, backbone_id, settings.refit_chunk)]
        )
        kmeans = KMeans(n_clusters=k, n_init=10, random_state=settings.refit_seed).fit(vectors)
        return kmeans.cluster_centers_.astype(np.float32), "kmeans"
    # Too many to hold at once: stream chunks through MiniBatchKMeans for a few epochs.
    kmeans = MiniBatchKMeans(n_clusters=k, random_state=settings.refit_seed, n_init=3)
    for _epoch in range(3):
        for _ids, vectors, _labels in iter_embeddings(session, backbone_id, settings.refit_chunk):
            if len(vectors) >= k:
                kmeans.partial_fit(vectors)
    return kmeans.cluster_centers_.astype(np.float32), "minibatch-kmeans"


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def refit(settings: Settings, *, k: int | None = None) -> RefitResult:
    """Fit a new clustering version on the stored embeddings and make it current.

    This is what the periodic task and `vitrine refit` both run.
    """
    with refit_lock() as acquired:
        if not acquired:
            return _skipped("another refit is running")
        return _refit_locked(settings, k)


def _skipped(reason: str, backbone_id: str | None = None) -> RefitResult:
    log.info("refit skipped: %s", reason)
    return RefitResult(None, backbone_id, 0, 0, 0, None, None, None, 0.0, 0, [], reason)


def _refit_locked(settings: Settings, k_override: int | None) -> RefitResult:
    started = time.perf_counter()
    with session_scope() as session:
        backbone_id = current_backbone_id(session, settings.model)
        if backbone_id is None:
            return _skipped(f"no embeddings of {settings.model} yet")
        n = session.execute(
            select(func.count()).select_from(Embedding).where(Embedding.backbone_id == backbone_id)
        ).scalar_one()
        known = session.execute(
            select(func.count(func.distinct(label_expression())))
            .select_from(Embedding)
            .join(Listing, Listing.id == Embedding.listing_id)
            .where(Embedding.backbone_id == backbone_id)
        ).scalar_one()
        k = k_override or settings.refit_k or max(2, int(known))
        if n < k:
            return _skipped(f"{n} embeddings are fewer than k={k}", backbone_id)

        centroids, algorithm = _fit_centroids(session, backbone_id, n, k, settings)
        centroids = _unit_rows(centroids)
        previous = current_version(session, backbone_id)
        previous_centroids = previous.centroid_matrix() if previous is not None else None

        assignments, previous_assignments, labels = [], [], []
        for _ids, vectors, chunk_labels in iter_embeddings(session, backbone_id, settings.refit_chunk):
            assignments.append(np.argmax(vectors @ centroids.T, axis=1))
            if previous_centroids is not None:
                previous_assignments.append(np.argmax(vectors @ previous_centroids.T, axis=1))
            labels.extend(chunk_labels)
        assigned = np.concatenate(assignments)
        fit_seconds = time.perf_counter() - started

        labelled = np.array([label is not None for label in labels])
        ari = nmi = None
        if labelled.sum() >= 2:
            truth = [label for label in labels if label is not None]
            ari = float(adjusted_rand_score(truth, assigned[labelled]))
            nmi = float(normalized_mutual_info_score(truth, assigned[labelled]))
        stability = (
            float(adjusted_rand_score(np.concatenate(previous_assignments), assigned))
            if previous_assignments
            else None
        )
        _categories, _shares, summary = cluster_label_shares(assigned, labels, k)

        session.execute(
            update(ClusteringVersion)
            .where(ClusteringVersion.backbone_id == backbone_id, ClusteringVersion.is_current)
            .values(is_current=False)
        )
        version = ClusteringVersion(
            backbone_id=backbone_id,
            k=k,
            dim=centroids.shape[1],
            centroids=centroids,
            cluster_categories=summary,
            sizes=np.bincount(assigned, minlength=k).tolist(),
            n_vectors=int(n),
            n_labelled=int(labelled.sum()),
            ari=ari,
            nmi=nmi,
            stability_ari=stability,
            fit_seconds=round(fit_seconds, 3),
            algorithm=algorithm,
            is_current=True,
        )
        session.add(version)
        session.flush()
        version_id = version.id
    # The switch above is committed; now (re)assign suggestions in bounded chunks.
    suggested, explain = reassign_suggestions(settings, backbone_id)
    log.info(
        "refit: version %s k=%d n=%d ari=%s nmi=%s stability=%s in %.1fs",
        version_id,
        k,
        n,
        ari,
        nmi,
        stability,
        fit_seconds,
    )
    return RefitResult(
        version_id,
        backbone_id,
        k,
        int(n),
        int(labelled.sum()),
        ari,
        nmi,
        stability,
        fit_seconds,
        suggested,
        explain,
    )


def reassign_suggestions(settings: Settings, backbone_id: str) -> tuple[int, list[int]]:
    """Suggest under the current version for every embedded listing, one transaction per chunk."""
    with session_scope() as session:
        version = current_version(session, backbone_id)
        if version is None:
            return 0, []
        model = build_suggestion_model(session, version, settings)
    total, explain = 0, []
    last_id = 0
    while True:
        with session_scope() as session:
            rows = session.execute(
                select(Embedding.id, Embedding.listing_id, Embedding.vector)
                .where(Embedding.backbone_id == backbone_id, Embedding.id > last_id)
                .order_by(Embedding.id)
                .limit(settings.refit_chunk)
            ).all()
            if not rows:
                break
            last_id = rows[-1][0]
            results = upsert_suggestions(
                session, model, [r[1] for r in rows], np.stack([r[2] for r in rows]), settings
            )
        total += len(results)
        explain.extend(
            r.listing_id
            for r in results
            if r.needs_review or sampled_for_explanation(r.listing_id, settings.explain_sample_rate)
        )
    return total, explain
