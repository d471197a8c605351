"""Suggestion accuracy on held-out labelled photos: calibration, and how sellers' mistakes are caught."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.model_selection import train_test_split

from common.settings import Settings
from common.suggestions.clusters import Clusters, cluster_label_shares
from common.suggestions.fitting import fit_suggestion_model
from common.suggestions.model import SuggestionModel
from common.suggestions.policy import ReviewReason, review_reason
from common.suggestions.scorers import LabelledSet
from vitrine.evaluation.dataset import SPLIT_SEED

# Shares of the labelled half given a wrong category, to measure how sellers' mistakes are caught.
NOISE_SHARES = (0.1, 0.2)


CALIBRATION_BINS = 10


LABELLED_SHARE = 0.5


def split_labelled(labels: Sequence[str], seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Stratified halves: the sellers' categories (labelled) and the new listings (held out)."""
    labelled, held_out = train_test_split(
        np.arange(len(labels)), train_size=LABELLED_SHARE, stratify=list(labels), random_state=seed
    )
    return np.sort(labelled), np.sort(held_out)


def suggestion_model(
    features: np.ndarray,
    labels: Sequence[str | None],
    k: int,
    settings: Settings,
    seed: int = 0,
    titles: Sequence[str | None] | None = None,
) -> SuggestionModel:
    """The model a refit builds: KMeans on all unit vectors, the configured method fitted on the
    labelled ones (listing ids are row numbers), its threshold estimated by cross-validation."""
    centroids = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(features).cluster_centers_
    centroids = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    assigned = np.argmax(features @ centroids.T, axis=1)
    categories, shares, _summary = cluster_label_shares(assigned, list(labels), k)
    index = {c: i for i, c in enumerate(categories)}
    known = np.flatnonzero([label is not None for label in labels])
    labelled = LabelledSet(
        known,
        features[known],
        np.array([index[str(labels[int(i)])] for i in known], dtype=np.int64),
        [titles[int(i)] for i in known] if titles is not None else [None] * len(known),
    )
    seeded = settings.replace(refit_seed=seed)
    return fit_suggestion_model(Clusters(0, "evaluation", centroids, categories, shares), seeded, labelled)


def calibration(confidence: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """Reliability of the confidence: per bin of confidence, the share right; and the expected
    calibration error (ECE), the bins' |accuracy − confidence| weighted by their share."""
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1]), 0, CALIBRATION_BINS - 1)
    rows, ece = [], 0.0
    for b in range(CALIBRATION_BINS):
        members = bins == b
        if not members.any():
            continue
        accuracy, mean_confidence = float(correct[members].mean()), float(confidence[members].mean())
        ece += members.mean() * abs(accuracy - mean_confidence)
        rows.append({"confidence": mean_confidence, "accuracy": accuracy, "n": int(members.sum())})
    return {"ece": round(float(ece), 4), "bins": rows}


def suggestion_accuracy(
    features: np.ndarray,
    labels: Sequence[str],
    k: int,
    settings: Settings,
    seed: int = SPLIT_SEED,
    titles: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """Suggestions for the held-out half when the other half carries its category.

    The threshold is the one the refit would estimate from the labelled half alone; the
    realised precision and coverage are what it gives on the held-out half.
    """
    labelled, held_out = split_labelled(labels, seed)
    known: list[str | None] = [None] * len(labels)
    for i in labelled:
        known[i] = labels[i]
    model = suggestion_model(features, known, k, settings, seed, titles)
    held_titles = [titles[i] for i in held_out] if titles is not None else None
    scored = model.score(features[held_out], held_titles, held_out)
    truth = [labels[i] for i in held_out]
    correct = np.array([s.category == t for s, t in zip(scored, truth, strict=True)])
    confidence = np.array([s.confidence for s in scored])
    estimate = model.threshold
    threshold = estimate.threshold if estimate is not None else math.inf
    accepted = confidence >= threshold
    return {
        "method": model.method,
        "accuracy": round(float(correct.mean()), 4),
        "n_labelled": len(labelled),
        "n_held_out": len(held_out),
        "mean_confidence": round(float(confidence.mean()), 4),
        "threshold": round(threshold, 4) if estimate is not None else None,
        "estimated_precision": _rounded(estimate.estimated_precision if estimate else None),
        "estimated_coverage": _rounded(estimate.estimated_coverage if estimate else None),
        "coverage_at_target": round(float(accepted.mean()), 4),
        "realised_precision": round(float(correct[accepted].mean()), 4) if accepted.any() else None,
        "calibration": calibration(confidence, correct),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(float(np.mean(known)), 4) if known else None


def suggestion_study(
    features: np.ndarray,
    labels: Sequence[str],
    k: int,
    settings: Settings,
    seeds: Sequence[int],
    titles: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """`suggestion_accuracy` over one stratified split per seed: the mean, its spread, every run."""
    runs = [suggestion_accuracy(features, labels, k, settings, seed, titles) for seed in seeds]
    summary: dict[str, Any] = {
        "method": settings.suggestions.suggestion_method,
        "n_labelled": runs[0]["n_labelled"],
    }
    summary["n_held_out"] = runs[0]["n_held_out"]
    for key in (
        "accuracy",
        "mean_confidence",
        "threshold",
        "estimated_precision",
        "estimated_coverage",
        "coverage_at_target",
        "realised_precision",
    ):
        summary[key] = _mean([r[key] for r in runs])
    summary["accuracy_std"] = round(float(np.std([r["accuracy"] for r in runs])), 4)
    summary["accuracy_runs"] = [r["accuracy"] for r in runs]
    summary["coverage_runs"] = [r["coverage_at_target"] for r in runs]
    summary["realised_precision_runs"] = [r["realised_precision"] for r in runs]
    summary["ece"] = _mean([r["calibration"]["ece"] for r in runs])
    summary["target_precision"] = settings.suggestions.target_precision
    # The reliability diagram shows the first split's bins.
    summary["calibration"] = runs[0]["calibration"]["bins"]
    return summary


def noisy_labels(
    labels: Sequence[str], rows: np.ndarray, share: float, seed: int
) -> tuple[list[str], np.ndarray]:
    """The labels with `share` of `rows` replaced by another category at random; which were replaced."""
    rng = np.random.default_rng(seed)
    categories = sorted(set(labels))
    replaced = np.sort(rng.choice(rows, size=round(share * len(rows)), replace=False))
    noisy = list(labels)
    for i in replaced:
        others = [c for c in categories if c != labels[i]]
        noisy[i] = others[int(rng.integers(len(others)))]
    return noisy, replaced


def seller_noise(
    features: np.ndarray,
    labels: Sequence[str],
    k: int,
    settings: Settings,
    noise: float,
    seed: int = SPLIT_SEED,
    titles: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """Sellers who chose wrong: `noise` of the labelled half replaced at random.

    A labelled listing is flagged `seller_disagrees` exactly as the live system flags it: its
    out-of-fold suggestion is confident (at the threshold estimated from the noisy labels) and
    differs from its label. Flags are scored against the replaced ones; the accuracy is on the
    held-out half, trained on the noisy labels.
    """
    labelled, held_out = split_labelled(labels, seed)
    noisy, replaced = noisy_labels(labels, labelled, noise, seed)
    known: list[str | None] = [None] * len(labels)
    for i in labelled:
        known[i] = noisy[i]
    model = suggestion_model(features, known, k, settings, seed, titles)
    threshold = model.acceptance_threshold(settings)
    on_labelled = model.score(
        features[labelled], [titles[i] for i in labelled] if titles is not None else None, labelled
    )
    flagged = np.array(
        [
            review_reason(int(i), s.category, s.confidence, noisy[i], settings, threshold)
            == ReviewReason.seller_disagrees
            for i, s in zip(labelled, on_labelled, strict=True)
        ]
    )
    truth = np.isin(labelled, replaced)
    held = model.score(
        features[held_out], [titles[i] for i in held_out] if titles is not None else None, held_out
    )
    accuracy = np.mean([s.category == labels[i] for i, s in zip(held_out, held, strict=True)])
    return {
        "flag_precision": float(truth[flagged].mean()) if flagged.any() else None,
        "flag_recall": float(flagged[truth].mean()) if truth.any() else None,
        "flagged": int(flagged.sum()),
        "replaced": int(truth.sum()),
        "accuracy": float(accuracy),
    }


def noise_study(
    features: np.ndarray,
    labels: Sequence[str],
    k: int,
    settings: Settings,
    seeds: Sequence[int],
    titles: Sequence[str | None] | None = None,
) -> list[dict[str, Any]]:
    """`seller_noise` at each share of wrong categories, averaged over the splits."""
    rows = []
    for noise in NOISE_SHARES:
        runs = [seller_noise(features, labels, k, settings, noise, seed, titles) for seed in seeds]
        rows.append(
            {
                "method": settings.suggestions.suggestion_method,
                "noise": noise,
                "flag_precision": _mean([r["flag_precision"] for r in runs]),
                "flag_recall": _mean([r["flag_recall"] for r in runs]),
                "flagged": _mean([r["flagged"] for r in runs]),
                "replaced": _mean([r["replaced"] for r in runs]),
                "accuracy": _mean([r["accuracy"] for r in runs]),
            }
        )
    return rows
