"""Fitting a suggestion model at refit: the classifiers, out-of-fold probabilities, the fusion
weights and the acceptance threshold for a target precision.

The refit and the study both call `fit_suggestion_model`, so the study measures what runs;
scoring with what was fitted is `common.suggestions.model`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import StandardScaler

from common.settings import Settings
from common.suggestions.clusters import Clusters
from common.suggestions.model import Fitted, SuggestionModel, fuse, model_for_clusters
from common.suggestions.policy import threshold_from_probabilities, threshold_sample
from common.suggestions.scorers import LabelledSet, has_title

# Folds of the cross-validation that gives out-of-fold probabilities (threshold, fusion weights).
FOLDS = 5
# Fusion weights are searched on this grid (a for the image, b for the title).
FUSION_WEIGHTS = tuple(w / 4 for w in range(0, 13))
# A title model needs at least this many labelled titles per fold to be worth fitting.
MIN_TITLES = 2 * FOLDS


def linear_probe() -> Any:
    """Logistic regression on standardised embeddings, scikit-learn's default regularisation."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def title_classifier() -> Any:
    """TF-IDF of words (1–2-grams) and characters within words (2–5-grams), logistic regression.

    Character n-grams carry brand names, plurals and misspellings that words miss.
    """
    features = FeatureUnion(
        [
            ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)),
        ]
    )
    # TF-IDF rows are unit length and sparse: weaker regularisation than the default suits them.
    return make_pipeline(features, LogisticRegression(C=10.0, max_iter=1000))


def _folds(labels: np.ndarray, seed: int) -> StratifiedKFold | None:
    """Stratified folds, fewer when a category is rare; None when a category has one listing."""
    smallest = int(np.bincount(labels).min()) if len(labels) else 0
    n = min(FOLDS, smallest)
    return StratifiedKFold(n_splits=n, shuffle=True, random_state=seed) if n >= 2 else None


def _out_of_fold(
    classifier: Any, inputs: Any, labels: np.ndarray, n_categories: int, seed: int
) -> np.ndarray:
    present = np.unique(labels)
    compact = np.searchsorted(present, labels)
    folds = _folds(compact, seed)
    probs = np.zeros((len(labels), n_categories))
    if folds is None:
        return probs
    probs[:, present] = cross_val_predict(classifier, inputs, compact, cv=folds, method="predict_proba")
    return probs


def _fitted_classifier(classifier: Any, inputs: Any, labels: np.ndarray) -> Any:
    return classifier.fit(inputs, labels)


def fit_fusion(image: np.ndarray, title: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) minimising the log loss of the fused out-of-fold probabilities of titled listings."""
    has = ~np.isnan(title).any(axis=1)
    if not has.any():
        return (1.0, 0.0)
    classes = np.arange(image.shape[1])
    best, best_loss = (1.0, 1.0), math.inf
    for a in FUSION_WEIGHTS:
        for b in FUSION_WEIGHTS:
            if a == b == 0:
                continue
            fused = fuse(image[has], title[has], (a, b))
            loss = log_loss(labels[has], fused, labels=classes)
            if loss < best_loss:
                best, best_loss = (a, b), loss
    return best


def fit_suggestion_model(
    clusters: Clusters, settings: Settings, labelled: LabelledSet | None = None
) -> SuggestionModel:
    """Fit the configured method on the labelled listings and estimate its threshold.

    The refit and the study both call this, so the study measures exactly what runs.
    """
    categories = clusters.categories
    model = model_for_clusters(clusters, settings, labelled, Fitted(settings.suggestions.suggestion_method))
    if labelled is None or not len(labelled.labels) or not categories:
        return model
    fitted = model.fitted
    assert fitted is not None
    seed = settings.refit.seed
    n_categories = len(categories)
    method = settings.suggestions.suggestion_method
    signals: dict[str, np.ndarray] = {}
    if method in ("linear", "fused"):
        present = np.unique(labelled.labels)
        if len(present) >= 2:
            fitted.image = _fitted_classifier(linear_probe(), labelled.vectors, labelled.labels)
            signals["image"] = _out_of_fold(
                linear_probe(), labelled.vectors, labelled.labels, n_categories, seed
            )
    if method in ("title", "fused"):
        has = has_title(labelled.titles)
        title_p = np.full((len(labelled.labels), n_categories), np.nan)
        titled = labelled.labels[has]
        if has.sum() >= MIN_TITLES and len(np.unique(titled)) >= 2:
            texts = [t for t, h in zip(labelled.titles, has, strict=True) if h]
            fitted.title = _fitted_classifier(title_classifier(), texts, titled)
            title_p[has] = _out_of_fold(title_classifier(), texts, titled, n_categories, seed)
        signals["title"] = title_p
    labels = labelled.labels
    if method in ("centroid", "knn") or ("image" not in signals and method != "title"):
        # Nothing fitted (or no probe: fewer than two categories): kNN or centroids, scored on a
        # sample only, leave-one-out (never its own vote). Without a probe, fused is the photo alone.
        rows = threshold_sample(len(labels), seed)
        signals = {"image": model.image_probabilities(labelled.vectors[rows], labelled.listing_ids[rows])}
        labels = labels[rows]
        fitted.title = None
    if method == "fused" and "title" in signals:
        fitted.fusion = fit_fusion(signals["image"], signals["title"], labelled.labels)
        probs = fuse(signals["image"], signals["title"], fitted.fusion)
    elif method == "title":
        probs = np.nan_to_num(signals["title"], nan=0.0)
    else:
        probs = signals["image"]
    if fitted.image is not None or fitted.title is not None:
        # Fitted parts learnt from these listings: their own suggestions must be out of fold.
        fitted.oof_ids = labelled.listing_ids.copy()
        fitted.oof_revisions = None if labelled.revisions is None else labelled.revisions.copy()
        fitted.oof_probabilities = probs.astype(np.float32)
        fitted.oof_signals = {name: values.astype(np.float32) for name, values in signals.items()}
    rows = threshold_sample(len(labels), seed)
    fitted.threshold = threshold_from_probabilities(
        probs[rows], labels[rows], settings.suggestions.target_precision
    )
    return model
