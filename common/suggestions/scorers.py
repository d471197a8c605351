"""The signals a suggestion is made of: P(category | photo) three ways, and P(category | title).

- centroid: p(cluster | x) = softmax(cos(x, centroid) / T) over all centroids, then
  P(category | x) = Σ_clusters p(cluster | x) · share of that category among the cluster's
  labelled members.
- knn: the K nearest labelled embeddings (cosine) vote, each with weight max(cos, 0);
  P(category | x) is the category's share of the vote. A labelled listing never votes for itself.
- a fitted classifier (the linear probe on embeddings, or TF-IDF + logistic regression on titles):
  its predict_proba in the model's category order.
Each is a plain function of arrays; `common.suggestions.model` combines them by method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.suggestions.clusters import Clusters

# At most this many query × reference similarities at once (float32: 64 MiB).
KNN_BLOCK_ENTRIES = 16_000_000


@dataclass(frozen=True)
class LabelledSet:
    """Labelled listings: what a refit learns from, and the reference kNN votes with."""

    listing_ids: np.ndarray  # n
    vectors: np.ndarray  # n × d, unit rows
    labels: np.ndarray  # n category indices
    titles: list[str | None]
    # The listing revision each vector is of (None: not from the database, as in evaluation).
    revisions: np.ndarray | None = None


def centroid_probabilities(clusters: Clusters, vectors: np.ndarray, temperature: float) -> np.ndarray:
    logits = (vectors @ clusters.centroids.T) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    cluster_p = np.exp(logits)
    cluster_p /= cluster_p.sum(axis=1, keepdims=True)
    return np.asarray(cluster_p @ clusters.shares)


def knn_probabilities(
    reference: LabelledSet,
    vectors: np.ndarray,
    n_categories: int,
    neighbours: int,
    listing_ids: np.ndarray | None = None,
) -> np.ndarray:
    """kNN votes; `listing_ids`: queries that are themselves in the reference never vote for themselves."""
    k = min(neighbours, len(reference.vectors))
    probs = np.zeros((len(vectors), n_categories), dtype=np.float64)
    column: dict[int, int] = {}
    if listing_ids is not None:
        column = {int(i): c for c, i in enumerate(reference.listing_ids)}
    # Blocks of queries keep the similarity matrix (and argpartition's int64 copy) bounded.
    step = max(1, KNN_BLOCK_ENTRIES // len(reference.vectors))
    for start in range(0, len(vectors), step):
        sims = vectors[start : start + step] @ reference.vectors.T
        if column:
            assert listing_ids is not None
            for row, listing_id in enumerate(listing_ids[start : start + step]):
                own = column.get(int(listing_id))
                if own is not None:
                    sims[row, own] = -np.inf  # leave-one-out: never its own vote
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        rows = np.arange(len(sims))[:, None]
        np.add.at(
            probs[start : start + step],
            (rows, reference.labels[top]),
            np.maximum(sims[rows, top], 0.0),
        )
    totals = probs.sum(axis=1, keepdims=True)
    return np.divide(probs, totals, out=np.zeros_like(probs), where=totals > 0)


def classifier_probabilities(classifier: Any, inputs: Any, n_categories: int) -> np.ndarray:
    """predict_proba in the model's category order (a class the classifier never saw: 0)."""
    probs = np.zeros((len(inputs), n_categories))
    probs[:, classifier.classes_] = classifier.predict_proba(inputs)
    return probs


def has_title(titles: Sequence[str | None]) -> np.ndarray:
    return np.array([bool(t and t.strip()) for t in titles], dtype=bool)


def title_probabilities(
    classifier: Any | None, titles: Sequence[str | None], n_categories: int
) -> tuple[np.ndarray, np.ndarray]:
    """P(category | title) and which rows have a title (the others are all zeros)."""
    probs = np.zeros((len(titles), n_categories))
    has = has_title(titles)
    if classifier is not None and has.any():
        texts = [t for t, h in zip(titles, has, strict=True) if h]
        probs[has] = classifier_probabilities(classifier, texts, n_categories)
    else:
        has[:] = False
    return probs, has
