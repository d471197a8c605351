"""The clustering refit: KMeans on the stored embeddings → a new current clustering version."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from common.db import Database
from common.delivery.outbox import request_explanations
from common.delivery.publisher import Publisher
from common.moderation.labels import label_expression
from common.object_store import STORAGE_ERRORS, ObjectStore
from common.schema import ClusteringVersion, Embedding, Listing
from common.settings import Settings
from common.suggestions.clusters import Clusters, cluster_label_shares
from common.suggestions.corpus import (
    ColdStart,
    cold_start,
    current_version,
    iter_embeddings,
    labelled_set,
    newest_backbone_id,
)
from common.suggestions.fitting import fit_suggestion_model
from common.suggestions.model import SuggestionModel
from common.suggestions.rows import Lineage, reassign_suggestions

log = logging.getLogger(__name__)

# Arbitrary constant naming the refit lock among Postgres advisory locks.
REFIT_LOCK_KEY = 0x56495452  # "VITR"
SKIPPED_RUNNING = "another refit is running"


@dataclass(frozen=True)
class RefitResult:
    """What a refit did; a skipped one has only its reason (and the backbone, when known)."""

    version_id: int | None = None
    backbone_id: str | None = None
    k: int = 0
    n_vectors: int = 0
    n_labelled: int = 0
    ari: float | None = None
    nmi: float | None = None
    stability_ari: float | None = None
    fit_seconds: float = 0.0
    suggested: int = 0
    explain: list[int] = field(default_factory=list)  # listings whose new decision wants an overlay
    superseded: list[str] = field(default_factory=list)  # overlays that no longer explain their decision
    skipped_reason: str | None = None


@dataclass(frozen=True)
class Scores:
    """How a fitted clustering assigns the stored embeddings, and how that matches the labels."""

    assigned: np.ndarray
    labels: list[str | None]
    ari: float | None
    nmi: float | None
    stability_ari: float | None

    @property
    def n_labelled(self) -> int:
        return sum(label is not None for label in self.labels)


@contextmanager
def refit_lock(db: Database) -> Iterator[bool]:
    """Postgres advisory lock held on its own connection for the whole refit.

    Two beats, or a beat and `vitrine refit`, can never refit at once; a crashed refit
    releases the lock with its connection.
    """
    with db.engine.connect() as connection:
        acquired = bool(
            connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": REFIT_LOCK_KEY}).scalar()
        )
        try:
            yield acquired
        finally:
            if acquired:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": REFIT_LOCK_KEY})
            connection.commit()


def refit(
    db: Database, settings: Settings, *, k: int | None = None, min_age: float | None = None
) -> RefitResult:
    """Fit a new clustering version on the stored embeddings, make it current, re-suggest.

    This is what the periodic task and `vitrine refit` both run. `min_age`: skip when the
    current version is younger than this many seconds (the periodic task passes most of its
    interval, so two beats, or a beat and a manual refit, make one refit per interval).
    """
    with refit_lock(db) as acquired:
        if not acquired:
            return _skipped(SKIPPED_RUNNING)
        started = time.perf_counter()
        with db.transaction() as session:
            backbone_id = newest_backbone_id(session, settings.backbone.model)
            if backbone_id is None:
                return _skipped(f"no embeddings of {settings.backbone.model} yet")
            age = version_age(session, backbone_id)
            if min_age is not None and age is not None and age < min_age:
                return _skipped(f"the current clustering is {age:.0f}s old, younger than {min_age:.0f}s")
            n, k = count_for_fit(session, backbone_id, k or settings.refit.k)
            if n < k:
                return _skipped(f"{n} embeddings are fewer than k={k}", backbone_id)
            centroids, algorithm = fit_centroids(session, backbone_id, n, k, settings)
            scores = score_clustering(session, backbone_id, centroids, settings.refit.chunk)
            model = fit_suggestions(session, backbone_id, centroids, scores, settings)
            fit_seconds = time.perf_counter() - started
            lineage = cluster_lineage(current_version(session, backbone_id), centroids)
            version_id = make_current(
                session, backbone_id, centroids, scores, n, fit_seconds, algorithm, model
            )
            model.clusters.version_id = version_id
        # The switch is committed; now (re)assign suggestions in bounded chunks.
        suggested, explain, dropped = reassign_suggestions(db, settings, backbone_id, lineage, model)
    estimate = model.threshold
    log.info(
        "refit: version %s k=%d n=%d ari=%s nmi=%s stability=%s %s threshold=%s in %.1fs",
        version_id, k, n, scores.ari, scores.nmi, scores.stability_ari, model.method,
        None if estimate is None else round(estimate.threshold, 4), fit_seconds,
    )  # fmt: skip
    return RefitResult(
        version_id=version_id,
        backbone_id=backbone_id,
        k=k,
        n_vectors=n,
        n_labelled=scores.n_labelled,
        ari=scores.ari,
        nmi=scores.nmi,
        stability_ari=scores.stability_ari,
        fit_seconds=fit_seconds,
        suggested=suggested,
        explain=explain,
        superseded=dropped,
    )


def first_refit_due(db: Database, settings: Settings) -> ColdStart | None:
    """The cold start's state when the first clustering of the model should be made now, else None.

    A fresh deployment (or a new backbone) has no clustering, so every listing would wait as
    `embedded` until the periodic refit, up to `VITRINE_REFIT_INTERVAL` later. The sweep asks
    this every `VITRINE_SWEEP_INTERVAL` and sends a refit as soon as enough labelled listings
    are embedded; once a clustering exists it answers None and the interval rules again.
    """
    with db.transaction() as session:
        state = cold_start(session, settings.backbone.model, settings.refit.first_after)
    return state if state is not None and state.due else None


def _skipped(reason: str, backbone_id: str | None = None) -> RefitResult:
    log.info("refit skipped: %s", reason)
    return RefitResult(backbone_id=backbone_id, skipped_reason=reason)


def version_age(session: Session, backbone_id: str) -> float | None:
    """Seconds since the current version of the backbone was made; None without one."""
    created = session.execute(
        select(ClusteringVersion.created_at).where(
            ClusteringVersion.backbone_id == backbone_id, ClusteringVersion.is_current
        )
    ).scalar_one_or_none()
    return None if created is None else (datetime.now(UTC) - created).total_seconds()


def cluster_lineage(previous: ClusteringVersion | None, centroids: np.ndarray) -> Lineage | None:
    """New clusters that continue a previous one: mutual nearest centroids (cosine)."""
    if previous is None or previous.dim != centroids.shape[1]:
        return None
    similarity = centroids @ previous.centroid_matrix().T
    nearest_old = np.argmax(similarity, axis=1)
    nearest_new = np.argmax(similarity, axis=0)
    clusters = {new: int(old) for new, old in enumerate(nearest_old) if nearest_new[old] == new}
    return Lineage(previous.id, clusters)


def count_for_fit(session: Session, backbone_id: str, k: int | None) -> tuple[int, int]:
    """(embeddings of the backbone, k): k defaults to the number of known labels, at least 2."""
    n = session.execute(
        select(func.count()).select_from(Embedding).where(Embedding.backbone_id == backbone_id)
    ).scalar_one()
    if k is None:
        known = session.execute(
            select(func.count(func.distinct(label_expression())))
            .select_from(Embedding)
            .join(Listing, Listing.id == Embedding.listing_id)
            .where(Embedding.backbone_id == backbone_id)
        ).scalar_one()
        k = max(2, int(known))
    return int(n), k


def fit_centroids(
    session: Session, backbone_id: str, n: int, k: int, settings: Settings
) -> tuple[np.ndarray, str]:
    """Unit-length KMeans centroids; streamed through MiniBatchKMeans above `refit_max_vectors`."""
    if n <= settings.refit.max_vectors:
        vectors = np.concatenate(
            [v for _ids, v, _labels in iter_embeddings(session, backbone_id, settings.refit.chunk)]
        )
        kmeans = KMeans(n_clusters=k, n_init=10, random_state=settings.refit.seed).fit(vectors)
        centroids, algorithm = kmeans.cluster_centers_, "kmeans"
    else:
        # Too many to hold at once: stream chunks through MiniBatchKMeans for a few epochs.
        streamed = MiniBatchKMeans(n_clusters=k, random_state=settings.refit.seed, n_init=3)
        for _epoch in range(3):
            for _ids, vectors, _labels in iter_embeddings(session, backbone_id, settings.refit.chunk):
                if len(vectors) >= k:
                    streamed.partial_fit(vectors)
        centroids, algorithm = streamed.cluster_centers_, "minibatch-kmeans"
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    return (centroids / np.maximum(norms, 1e-12)).astype(np.float32), algorithm


def score_clustering(session: Session, backbone_id: str, centroids: np.ndarray, chunk: int) -> Scores:
    """Assign every stored embedding; ARI/NMI against the labels, ARI against the current version."""
    previous = current_version(session, backbone_id)
    previous_centroids = previous.centroid_matrix() if previous is not None else None
    assignments, previous_assignments, labels = [], [], []
    for _ids, vectors, chunk_labels in iter_embeddings(session, backbone_id, chunk):
        assignments.append(np.argmax(vectors @ centroids.T, axis=1))
        if previous_centroids is not None:
            previous_assignments.append(np.argmax(vectors @ previous_centroids.T, axis=1))
        labels.extend(chunk_labels)
    assigned = np.concatenate(assignments)
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
    return Scores(assigned, labels, ari, nmi, stability)


def fit_suggestions(
    session: Session, backbone_id: str, centroids: np.ndarray, scores: Scores, settings: Settings
) -> SuggestionModel:
    """The suggestion model of the new clusters, fitted on the labelled listings, with its threshold."""
    categories, shares, _summary = cluster_label_shares(scores.assigned, scores.labels, len(centroids))
    labelled = labelled_set(session, backbone_id, settings.refit.chunk, categories) if categories else None
    # The version id is known once the version row exists; `refit` sets it then.
    return fit_suggestion_model(Clusters(0, backbone_id, centroids, categories, shares), settings, labelled)


def make_current(
    session: Session,
    backbone_id: str,
    centroids: np.ndarray,
    scores: Scores,
    n: int,
    fit_seconds: float,
    algorithm: str,
    model: SuggestionModel | None = None,
) -> int:
    """Store the new version and make it the only current one of its backbone (same transaction)."""
    k = len(centroids)
    _categories, _shares, summary = cluster_label_shares(scores.assigned, scores.labels, k)
    estimate = model.threshold if model is not None else None
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
        sizes=np.bincount(scores.assigned, minlength=k).tolist(),
        n_vectors=n,
        n_labelled=scores.n_labelled,
        ari=scores.ari,
        nmi=scores.nmi,
        stability_ari=scores.stability_ari,
        fit_seconds=round(fit_seconds, 3),
        algorithm=algorithm,
        is_current=True,
        suggestion_method=model.method if model is not None else None,
        suggestion_model=model.fitted.dumps() if model is not None and model.fitted is not None else None,
        target_precision=estimate.target_precision if estimate else None,
        threshold=estimate.threshold if estimate else None,
        estimated_precision=estimate.estimated_precision if estimate else None,
        estimated_coverage=estimate.estimated_coverage if estimate else None,
    )
    session.add(version)
    session.flush()
    return version.id


def follow_up_refit(
    db: Database, publisher: Publisher, store: ObjectStore, settings: Settings, result: RefitResult
) -> None:
    """After a refit: overlays for the decisions that changed, and the old ones deleted."""
    request_explanations(db, publisher, result.explain, settings)
    if result.superseded:
        try:
            deleted = store.delete_keys(settings.store.overlay_bucket, result.superseded)
            log.info("deleted %d superseded overlay objects", deleted)
        except STORAGE_ERRORS as error:
            log.warning("superseded overlays not deleted: %s", error)
