"""Turn an embedding (and a title, where there is one) into a category suggestion with a confidence.

Methods, all documented in the README and measured side by side by `vitrine evaluate`:

- ``centroid``: p(cluster | x) = softmax(cos(x, centroid) / T) over all centroids, then
  P(category | x) = Σ_clusters p(cluster | x) · share of that category among the cluster's
  labelled members.
- ``knn``: the K nearest labelled embeddings (cosine) vote, each with weight max(cos, 0);
  P(category | x) is the category's share of the vote. A labelled listing never votes for itself.
- ``linear``: a logistic-regression probe on the standardised embeddings.
- ``title``: TF-IDF of the listing title (word and character n-grams) with logistic regression;
  a listing without a title gets no opinion.
- ``fused``: the image probe and the title combined log-linearly, p ∝ p_image^a · p_title^b, with
  a and b fitted at refit on out-of-fold probabilities; a listing without a title: image alone.

Every fitted part is fitted by `common.suggestions.fitting.fit_suggestion_model`, which the
refit and the study both call, so the study measures what runs. A listing that was among the
labelled listings the model learnt from is scored out of fold (its own fold's model, or kNN
without its own vote): its suggestion never repeats its own label back, which is what lets it
disagree with the seller.

The confidence is the top category's probability. The threshold above which a suggestion is
accepted without a moderator is estimated at refit, by cross-validation, for a target precision.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.settings import Settings

# At most this many query × reference similarities at once (float32: 64 MiB).
KNN_BLOCK_ENTRIES = 16_000_000
METHODS = ("centroid", "knn", "linear", "title", "fused")
IMAGE_METHODS = ("centroid", "knn", "linear")
# Folds of the cross-validation that gives out-of-fold probabilities (threshold, fusion weights).
FOLDS = 5
# The threshold is estimated on at most this many labelled listings: the standard error of a
# precision near 0.95 is then about 0.002, and the estimate's cost stays flat as listings grow.
THRESHOLD_SAMPLE = 10_000
# Accepting nothing: no confidence reaches a threshold above 1.
ACCEPT_NONE = math.nextafter(1.0, 2.0)
# Probabilities are floored here before logs are taken: kNN gives exact zeros, and a zero from
# one signal must not veto the other outright.
PROBABILITY_FLOOR = 1e-3
# Fusion weights are searched on this grid (a for the image, b for the title).
FUSION_WEIGHTS = tuple(w / 4 for w in range(0, 13))
# A title model needs at least this many labelled titles per fold to be worth fitting.
MIN_TITLES = 2 * FOLDS


@dataclass(frozen=True)
class ScoredCategory:
    cluster: int
    category: str | None
    confidence: float
    alternatives: list[dict[str, float | str]]
    # Each signal's own top category and probability: {"image": {...}, "title": {...}}.
    signals: dict[str, dict[str, float | str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ThresholdEstimate:
    """The lowest confidence accepted without a moderator, and what cross-validation expects of it."""

    target_precision: float
    threshold: float
    estimated_precision: float | None
    estimated_coverage: float
    n: int


@dataclass(frozen=True)
class LabelledSet:
    """The labelled listings a refit learns from."""

    listing_ids: np.ndarray  # n
    vectors: np.ndarray  # n × d, unit rows
    labels: np.ndarray  # n category indices
    titles: list[str | None]


@dataclass
class Fitted:
    """What a refit fits besides the clusters; stored with the clustering version."""

    method: str
    image: Any = None  # linear probe (scikit-learn pipeline)
    title: Any = None  # TF-IDF + logistic regression (scikit-learn pipeline)
    fusion: tuple[float, float] | None = None  # (a, b): p ∝ p_image^a · p_title^b
    # Out-of-fold probabilities of the labelled listings the fitted parts learnt from.
    oof_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    oof_probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    oof_signals: dict[str, np.ndarray] = field(default_factory=dict)
    threshold: ThresholdEstimate | None = None

    def dumps(self) -> bytes:
        # Read back only from our own database, by `Fitted.loads`.
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> Fitted:
        fitted = pickle.loads(data)
        assert isinstance(fitted, Fitted)
        return fitted


@dataclass
class SuggestionModel:
    """Everything needed to suggest under one clustering version, kept in memory by workers."""

    version_id: int
    backbone_id: str
    centroids: np.ndarray  # k × d, unit rows
    categories: list[str]  # column order of every probability matrix
    cluster_shares: np.ndarray  # k × C: category shares among each cluster's labelled members
    method: str = "centroid"
    temperature: float = 0.05
    reference_vectors: np.ndarray | None = None  # n × d labelled vectors (knn)
    reference_labels: np.ndarray | None = None  # n category indices (knn)
    reference_ids: np.ndarray | None = None  # n listing ids (knn: nobody votes for itself)
    neighbours: int = 15
    fitted: Fitted | None = None

    @property
    def threshold(self) -> ThresholdEstimate | None:
        return self.fitted.threshold if self.fitted is not None else None

    def nearest_clusters(self, vectors: np.ndarray) -> np.ndarray:
        return np.argmax(vectors @ self.centroids.T, axis=1)

    # -- signals ---------------------------------------------------------------------------

    def image_probabilities(
        self, vectors: np.ndarray, listing_ids: np.ndarray | None = None, method: str | None = None
    ) -> np.ndarray:
        """P(category | photo) by the image method (the model's own, or the image part of fused)."""
        method = method or (image_method_of(self.method))
        if method == "linear" and self.fitted is not None and self.fitted.image is not None:
            return _classifier_probabilities(self.fitted.image, vectors, len(self.categories))
        if method in ("knn", "linear") and self.reference_vectors is not None and len(self.reference_vectors):
            return self._knn_probabilities(vectors, listing_ids)
        return self._centroid_probabilities(vectors)

    def title_probabilities(self, titles: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """P(category | title) and which rows have a title (the others are all zeros)."""
        probs = np.zeros((len(titles), len(self.categories)))
        has = np.array([bool(t and t.strip()) for t in titles], dtype=bool)
        if self.fitted is not None and self.fitted.title is not None and has.any():
            probs[has] = _classifier_probabilities(
                self.fitted.title, [t for t, h in zip(titles, has, strict=True) if h], len(self.categories)
            )
        else:
            has[:] = False
        return probs, has

    def signal_probabilities(
        self,
        vectors: np.ndarray,
        titles: Sequence[str | None] | None = None,
        listing_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(P(category | listing) by the model's method, each signal's probabilities)."""
        titles = list(titles) if titles is not None else [None] * len(vectors)
        signals: dict[str, np.ndarray] = {}
        if self.method != "title":
            signals["image"] = self.image_probabilities(vectors, listing_ids)
        if self.method in ("title", "fused"):
            title_p, has = self.title_probabilities(titles)
            signals["title"] = np.where(has[:, None], title_p, np.nan)
        if self.method == "title":
            probs = np.nan_to_num(signals["title"], nan=0.0)
        elif self.method == "fused" and self.fitted is not None and self.fitted.fusion is not None:
            probs = fuse(signals["image"], signals["title"], self.fitted.fusion)
        else:
            probs = signals["image"]
        return self._out_of_fold(probs, signals, listing_ids)

    def _out_of_fold(
        self, probs: np.ndarray, signals: dict[str, np.ndarray], listing_ids: np.ndarray | None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Labelled listings the fitted parts learnt from get their out-of-fold probabilities."""
        fitted = self.fitted
        if listing_ids is None or fitted is None or not len(fitted.oof_ids):
            return probs, signals
        position = {int(i): p for p, i in enumerate(fitted.oof_ids)}
        rows = [(r, position[int(i)]) for r, i in enumerate(listing_ids) if int(i) in position]
        if not rows:
            return probs, signals
        mine, theirs = (np.array(x) for x in zip(*rows, strict=True))
        probs = probs.copy()
        probs[mine] = fitted.oof_probabilities[theirs]
        signals = {name: values.copy() for name, values in signals.items()}
        for name, values in fitted.oof_signals.items():
            if name in signals:
                signals[name][mine] = values[theirs]
        return probs, signals

    def category_probabilities(
        self,
        vectors: np.ndarray,
        titles: Sequence[str | None] | None = None,
        listing_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        return self.signal_probabilities(vectors, titles, listing_ids)[0]

    def _centroid_probabilities(self, vectors: np.ndarray) -> np.ndarray:
        logits = (vectors @ self.centroids.T) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        cluster_p = np.exp(logits)
        cluster_p /= cluster_p.sum(axis=1, keepdims=True)
        return np.asarray(cluster_p @ self.cluster_shares)

    def _knn_probabilities(self, vectors: np.ndarray, listing_ids: np.ndarray | None = None) -> np.ndarray:
        assert self.reference_vectors is not None and self.reference_labels is not None
        k = min(self.neighbours, len(self.reference_vectors))
        probs = np.zeros((len(vectors), len(self.categories)), dtype=np.float64)
        column: dict[int, int] = {}
        if listing_ids is not None and self.reference_ids is not None:
            column = {int(i): c for c, i in enumerate(self.reference_ids)}
        # Blocks of queries keep the similarity matrix (and argpartition's int64 copy) bounded.
        step = max(1, KNN_BLOCK_ENTRIES // len(self.reference_vectors))
        for start in range(0, len(vectors), step):
            sims = vectors[start : start + step] @ self.reference_vectors.T
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
                (rows, self.reference_labels[top]),
                np.maximum(sims[rows, top], 0.0),
            )
        totals = probs.sum(axis=1, keepdims=True)
        return np.divide(probs, totals, out=np.zeros_like(probs), where=totals > 0)

    # -- suggestions -----------------------------------------------------------------------

    def score(
        self,
        vectors: np.ndarray,
        titles: Sequence[str | None] | None = None,
        listing_ids: Sequence[int] | np.ndarray | None = None,
    ) -> list[ScoredCategory]:
        """One suggestion per vector; `titles` where known, `listing_ids` for out-of-fold scoring."""
        vectors = np.asarray(vectors, dtype=np.float32)
        clusters = self.nearest_clusters(vectors)
        if not self.categories:
            return [ScoredCategory(int(c), None, 0.0, []) for c in clusters]
        ids = np.asarray(listing_ids, dtype=np.int64) if listing_ids is not None else None
        probs, signals = self.signal_probabilities(vectors, titles, ids)
        results = []
        for row_index, (cluster, row) in enumerate(zip(clusters, probs, strict=True)):
            order = np.argsort(-row)[:3]
            top = [
                {"category": self.categories[i], "score": round(float(row[i]), 4)}
                for i in order
                if row[i] > 0
            ]
            best = top[0]["category"] if top else None
            confidence = float(row[order[0]]) if top else 0.0
            said: dict[str, dict[str, float | str]] = {}
            for name, values in signals.items():
                own = values[row_index]
                if not np.isnan(own).any() and own.max() > 0:
                    i = int(np.argmax(own))
                    said[name] = {"category": self.categories[i], "probability": round(float(own[i]), 4)}
            results.append(ScoredCategory(int(cluster), best, confidence, top, said))
        return results


def image_method_of(method: str) -> str:
    """The image signal of a method: fused reads the photo through the linear probe."""
    return "linear" if method == "fused" else method


def fuse(image: np.ndarray, title: np.ndarray, weights: tuple[float, float]) -> np.ndarray:
    """p ∝ p_image^a · p_title^b per row; rows without a title (NaN) keep the image alone."""
    a, b = weights
    has = ~np.isnan(title).any(axis=1)
    logits = a * np.log(np.maximum(image, PROBABILITY_FLOOR))
    logits[has] += b * np.log(np.maximum(title[has], PROBABILITY_FLOOR))
    logits -= logits.max(axis=1, keepdims=True)
    fused = np.exp(logits)
    fused /= fused.sum(axis=1, keepdims=True)
    return np.where(has[:, None], fused, image)


def _classifier_probabilities(classifier: Any, inputs: Any, n_categories: int) -> np.ndarray:
    """predict_proba in the model's category order (a class the classifier never saw: 0)."""
    probs = np.zeros((len(inputs), n_categories))
    probs[:, classifier.classes_] = classifier.predict_proba(inputs)
    return probs


def model_for_clusters(
    version_id: int,
    backbone_id: str,
    centroids: np.ndarray,
    categories: list[str],
    cluster_shares: np.ndarray,
    settings: Settings,
    reference: LabelledSet | None = None,
    fitted: Fitted | None = None,
) -> SuggestionModel:
    """A suggestion model with the configured method and its parameters, nothing fitted yet.

    `reference`: labelled listings for knn; `fitted`: what a refit fitted (`fit_suggestion_model`).
    """
    method = fitted.method if fitted is not None else settings.suggestions.suggestion_method
    model = SuggestionModel(
        version_id=version_id,
        backbone_id=backbone_id,
        centroids=centroids.astype(np.float32),
        categories=categories,
        cluster_shares=cluster_shares,
        method=method,
        temperature=settings.suggestions.centroid_temperature,
        neighbours=settings.suggestions.knn_neighbours,
        fitted=fitted,
    )
    if reference is not None and len(reference.labels):
        model.reference_vectors = reference.vectors
        model.reference_labels = reference.labels
        model.reference_ids = reference.listing_ids
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
