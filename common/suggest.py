"""Turn an embedding into a category suggestion with a confidence and the top-3 alternatives.

Two methods, both documented in the README:

- ``centroid``: p(cluster | x) = softmax(cos(x, centroid) / T) over all centroids, then
  P(category | x) = Σ_clusters p(cluster | x) · share of that category among the cluster's
  labelled members. A clear margin to the nearest centroid and a pure cluster both raise it.
- ``knn``: the K nearest labelled embeddings (cosine) vote, each with weight max(cos, 0);
  P(category | x) is the category's share of the vote.

The confidence is the top category's probability; below the configured threshold the
suggestion waits for a moderator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.config import Settings

# At most this many query × reference similarities at once (float32: 64 MiB).
KNN_BLOCK_ENTRIES = 16_000_000


@dataclass(frozen=True)
class ScoredCategory:
    cluster: int
    category: str | None
    confidence: float
    alternatives: list[dict[str, float | str]]


@dataclass
class SuggestionModel:
    """Everything needed to suggest under one clustering version, kept in memory by workers."""

    version_id: int
    backbone_id: str
    centroids: np.ndarray  # k × d, unit rows
    categories: list[str]  # column order of `cluster_shares`
    cluster_shares: np.ndarray  # k × C: category shares among each cluster's labelled members
    method: str = "centroid"
    temperature: float = 0.05
    reference_vectors: np.ndarray | None = None  # n × d labelled vectors (knn)
    reference_labels: np.ndarray | None = None  # n category indices (knn)
    neighbours: int = 15

    def nearest_clusters(self, vectors: np.ndarray) -> np.ndarray:
        return np.argmax(vectors @ self.centroids.T, axis=1)

    def category_probabilities(self, vectors: np.ndarray) -> np.ndarray:
        if self.method == "knn" and self.reference_vectors is not None and len(self.reference_vectors):
            return self._knn_probabilities(vectors)
        return self._centroid_probabilities(vectors)

    def _centroid_probabilities(self, vectors: np.ndarray) -> np.ndarray:
        logits = (vectors @ self.centroids.T) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        cluster_p = np.exp(logits)
        cluster_p /= cluster_p.sum(axis=1, keepdims=True)
        return cluster_p @ self.cluster_shares

    def _knn_probabilities(self, vectors: np.ndarray) -> np.ndarray:
        assert self.reference_vectors is not None and self.reference_labels is not None
        k = min(self.neighbours, len(self.reference_vectors))
        probs = np.zeros((len(vectors), len(self.categories)), dtype=np.float64)
        # Blocks of queries keep the similarity matrix (and argpartition's int64 copy) bounded.
        step = max(1, KNN_BLOCK_ENTRIES // len(self.reference_vectors))
        for start in range(0, len(vectors), step):
            sims = vectors[start : start + step] @ self.reference_vectors.T
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            rows = np.arange(len(sims))[:, None]
            np.add.at(
                probs[start : start + step],
                (rows, self.reference_labels[top]),
                np.maximum(sims[rows, top], 0.0),
            )
        totals = probs.sum(axis=1, keepdims=True)
        return np.divide(probs, totals, out=np.zeros_like(probs), where=totals > 0)

    def score(self, vectors: np.ndarray) -> list[ScoredCategory]:
        vectors = np.asarray(vectors, dtype=np.float32)
        clusters = self.nearest_clusters(vectors)
        if not self.categories:
            return [ScoredCategory(int(c), None, 0.0, []) for c in clusters]
        probs = self.category_probabilities(vectors)
        results = []
        for cluster, row in zip(clusters, probs, strict=True):
            order = np.argsort(-row)[:3]
            top = [
                {"category": self.categories[i], "score": round(float(row[i]), 4)}
                for i in order
                if row[i] > 0
            ]
            best = top[0]["category"] if top else None
            confidence = float(row[order[0]]) if top else 0.0
            results.append(ScoredCategory(int(cluster), best, confidence, top))
        return results


def model_for_clusters(
    version_id: int,
    backbone_id: str,
    centroids: np.ndarray,
    categories: list[str],
    cluster_shares: np.ndarray,
    settings: Settings,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
) -> SuggestionModel:
    """A suggestion model with the configured method and its parameters.

    The live system (per clustering version) and the study both build their models here, so the
    study measures exactly what runs. `reference`: labelled (vectors, category indices) for knn.
    """
    model = SuggestionModel(
        version_id=version_id,
        backbone_id=backbone_id,
        centroids=centroids.astype(np.float32),
        categories=categories,
        cluster_shares=cluster_shares,
        method=settings.suggestion_method,
        temperature=settings.centroid_temperature,
        neighbours=settings.knn_neighbours,
    )
    if settings.suggestion_method == "knn" and reference is not None:
        model.reference_vectors, model.reference_labels = reference
    return model


def cluster_label_shares(
    assignments: np.ndarray, labels: list[str | None], k: int
) -> tuple[list[str], np.ndarray, list[dict[str, object]]]:
    """Per cluster: category shares among labelled members, and the majority with its share."""
    categories = sorted({label for label in labels if label is not None})
    index = {category: i for i, category in enumerate(categories)}
    counts = np.zeros((k, len(categories)), dtype=np.int64)
    for cluster, label in zip(assignments, labels, strict=True):
        if label is not None:
            counts[int(cluster), index[label]] += 1
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    summary: list[dict[str, object]] = []
    for cluster in range(k):
        if totals[cluster, 0] == 0:
            summary.append({"category": None, "share": 0.0, "labelled": 0, "counts": {}})
            continue
        best = int(np.argmax(counts[cluster]))
        summary.append(
            {
                "category": categories[best],
                "share": round(float(shares[cluster, best]), 4),
                "labelled": int(totals[cluster, 0]),
                "counts": {c: int(n) for c, n in zip(categories, counts[cluster], strict=True) if n},
            }
        )
    return categories, shares, summary
