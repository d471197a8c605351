"""A suggestion model: the signals of `common.suggestions.scorers` combined by method.

Methods, all documented in the README and measured side by side by `vitrine evaluate`:
``centroid``, ``knn`` and ``linear`` read the photo alone; ``title`` the listing title alone;
``fused`` combines the image probe and the title log-linearly, p ∝ p_image^a · p_title^b, with
a and b fitted at refit on out-of-fold probabilities (a listing without a title: image alone).

Every fitted part is fitted by `common.suggestions.fitting.fit_suggestion_model`, which the
refit and the study both call, so the study measures what runs. A listing that was among the
labelled listings the model learnt from is scored out of fold (its own fold's model, or kNN
without its own vote): its suggestion never repeats its own label back, which is what lets it
disagree with the seller. The confidence is the top category's probability; whether it is
enough is the policy's call (`common.suggestions.policy`).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np

from common.settings import Settings, SuggestionMethod
from common.suggestions import policy
from common.suggestions.clusters import Clusters
from common.suggestions.policy import ThresholdEstimate
from common.suggestions.scorers import (
    LabelledSet,
    centroid_probabilities,
    classifier_probabilities,
    knn_probabilities,
    title_probabilities,
)

METHODS: tuple[str, ...] = get_args(SuggestionMethod)
# Probabilities are floored here before logs are taken: kNN gives exact zeros, and a zero from
# one signal must not veto the other outright.
PROBABILITY_FLOOR = 1e-3


@dataclass(frozen=True)
class ScoredCategory:
    cluster: int
    category: str | None
    confidence: float
    alternatives: list[dict[str, float | str]]
    # Each signal's own top category and probability: {"image": {...}, "title": {...}}.
    signals: dict[str, dict[str, float | str]] = field(default_factory=dict)


@dataclass
class Fitted:
    """What a refit fits besides the clusters; stored with the clustering version."""

    method: str
    image: Any = None  # linear probe (scikit-learn pipeline)
    title: Any = None  # TF-IDF + logistic regression (scikit-learn pipeline)
    fusion: tuple[float, float] | None = None  # (a, b): p ∝ p_image^a · p_title^b
    # Out-of-fold probabilities of the labelled listings the fitted parts learnt from.
    oof_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # The revision each cached score is of: it stands for that photo only, never for a new one.
    oof_revisions: np.ndarray | None = None
    oof_probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    oof_signals: dict[str, np.ndarray] = field(default_factory=dict)
    threshold: ThresholdEstimate | None = None

    def dumps(self) -> bytes:
        # Read back only from our own database, by `Fitted.loads`.
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> Fitted:
        fitted = _Unpickler(data).load()
        assert isinstance(fitted, Fitted)
        return fitted


class _Unpickler(pickle.Unpickler):
    """Reads versions fitted before the suggestion classes moved out of `common.suggest`."""

    def __init__(self, data: bytes) -> None:
        from io import BytesIO

        super().__init__(BytesIO(data))

    def find_class(self, module: str, name: str) -> Any:
        if module == "common.suggest":
            module = "common.suggestions.policy" if name == "ThresholdEstimate" else __name__
        return super().find_class(module, name)


@dataclass
class SuggestionModel:
    """Everything needed to suggest under one clustering version, kept in memory by workers."""

    clusters: Clusters
    method: str = "centroid"
    temperature: float = 0.05  # of the softmax over cosine similarities to the centroids
    neighbours: int = 15  # kNN's K
    reference: LabelledSet | None = None  # the labelled listings kNN votes with
    fitted: Fitted | None = None

    @property
    def version_id(self) -> int:
        return self.clusters.version_id

    @property
    def backbone_id(self) -> str:
        return self.clusters.backbone_id

    @property
    def categories(self) -> list[str]:
        return self.clusters.categories

    @property
    def threshold(self) -> ThresholdEstimate | None:
        return self.fitted.threshold if self.fitted is not None else None

    def image_probabilities(
        self, vectors: np.ndarray, listing_ids: np.ndarray | None = None, method: str | None = None
    ) -> np.ndarray:
        """P(category | photo) by the image method (the model's own, or the image part of fused)."""
        method = method or image_method_of(self.method)
        if method == "linear" and self.fitted is not None and self.fitted.image is not None:
            return classifier_probabilities(self.fitted.image, vectors, len(self.categories))
        if method in ("knn", "linear") and self.reference is not None and len(self.reference.vectors):
            return knn_probabilities(
                self.reference, vectors, len(self.categories), self.neighbours, listing_ids
            )
        return centroid_probabilities(self.clusters, vectors, self.temperature)

    def signal_probabilities(
        self,
        vectors: np.ndarray,
        titles: Sequence[str | None] | None = None,
        listing_ids: np.ndarray | None = None,
        revisions: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(P(category | listing) by the model's method, each signal's probabilities)."""
        titles = list(titles) if titles is not None else [None] * len(vectors)
        signals: dict[str, np.ndarray] = {}
        if self.method != "title":
            signals["image"] = self.image_probabilities(vectors, listing_ids)
        if self.method in ("title", "fused"):
            classifier = self.fitted.title if self.fitted is not None else None
            title_p, has = title_probabilities(classifier, titles, len(self.categories))
            signals["title"] = np.where(has[:, None], title_p, np.nan)
        if self.method == "title":
            probs = np.nan_to_num(signals["title"], nan=0.0)
        elif self.method == "fused" and self.fitted is not None and self.fitted.fusion is not None:
            probs = fuse(signals["image"], signals["title"], self.fitted.fusion)
        else:
            probs = signals["image"]
        return self._out_of_fold(probs, signals, listing_ids, revisions)

    def _out_of_fold(
        self,
        probs: np.ndarray,
        signals: dict[str, np.ndarray],
        listing_ids: np.ndarray | None,
        revisions: np.ndarray | None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Labelled listings the fitted parts learnt from get their out-of-fold probabilities.

        With `revisions` (listings from the database), only for the photo the score was made
        from: a listing's new photo is scored afresh, whatever was cached for its old one.
        """
        fitted = self.fitted
        if listing_ids is None or fitted is None or not len(fitted.oof_ids):
            return probs, signals
        cached = fitted.oof_revisions
        if revisions is not None and (cached is None or len(cached) != len(fitted.oof_ids)):
            return probs, signals  # fitted before scores were versioned: none can be trusted
        keys: list[object]
        if revisions is None or cached is None:
            keys = [int(i) for i in listing_ids]
            position: dict[object, int] = {int(i): p for p, i in enumerate(fitted.oof_ids)}
        else:
            keys = [(int(i), int(r)) for i, r in zip(listing_ids, revisions, strict=True)]
            pairs = zip(fitted.oof_ids, cached, strict=True)
            position = {(int(i), int(r)): p for p, (i, r) in enumerate(pairs)}
        rows = [(r, position[key]) for r, key in enumerate(keys) if key in position]
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

    def score(
        self,
        vectors: np.ndarray,
        titles: Sequence[str | None] | None = None,
        listing_ids: Sequence[int] | np.ndarray | None = None,
        revisions: Sequence[int] | np.ndarray | None = None,
    ) -> list[ScoredCategory]:
        """One suggestion per vector; `titles` where known, `listing_ids` (and the revision each
        vector is of) for out-of-fold scoring."""
        vectors = np.asarray(vectors, dtype=np.float32)
        clusters = self.clusters.nearest(vectors)
        if not self.categories:
            return [ScoredCategory(int(c), None, 0.0, []) for c in clusters]
        ids = np.asarray(listing_ids, dtype=np.int64) if listing_ids is not None else None
        revs = np.asarray(revisions, dtype=np.int64) if revisions is not None else None
        probs, signals = self.signal_probabilities(vectors, titles, ids, revs)
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

    def acceptance_threshold(self, settings: Settings) -> float:
        return policy.acceptance_threshold(self.threshold, settings)


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


def model_for_clusters(
    clusters: Clusters,
    settings: Settings,
    reference: LabelledSet | None = None,
    fitted: Fitted | None = None,
) -> SuggestionModel:
    """A suggestion model with the configured method and its parameters, nothing fitted yet.

    `reference`: labelled listings for knn; `fitted`: what a refit fitted (`fit_suggestion_model`).
    """
    return SuggestionModel(
        clusters=Clusters(
            clusters.version_id,
            clusters.backbone_id,
            clusters.centroids.astype(np.float32),
            clusters.categories,
            clusters.shares,
        ),
        method=fitted.method if fitted is not None else settings.suggestions.suggestion_method,
        temperature=settings.suggestions.centroid_temperature,
        neighbours=settings.suggestions.knn_neighbours,
        reference=reference if reference is not None and len(reference.labels) else None,
        fitted=fitted,
    )
