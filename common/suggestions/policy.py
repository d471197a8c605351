"""When a suggestion is accepted without a moderator, and why it waits for one when it is not.

The auto-accept threshold is estimated here at each refit, from out-of-fold suggestions of the
labelled listings, for the target precision (`estimate_threshold`), and chosen here for each
suggestion (`acceptance_threshold`: a configured override, else the version's estimate, else a
default); `review_reason` says why a suggestion goes to a moderator, `explanation_wanted` which
suggestions get a Grad-CAM overlay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from sklearn.metrics import precision_recall_curve

from common.settings import Settings
from common.suggestions.sampling import stable_fraction

# The threshold is estimated on at most this many labelled listings: the standard error of a
# precision near 0.95 is then about 0.002, and the estimate's cost stays flat as listings grow.
THRESHOLD_SAMPLE = 10_000
# Accepting nothing: no confidence reaches a threshold above 1.
ACCEPT_NONE = math.nextafter(1.0, 2.0)


@dataclass(frozen=True)
class ThresholdEstimate:
    """The lowest confidence accepted without a moderator, and what cross-validation expects of it."""

    target_precision: float
    threshold: float
    estimated_precision: float | None
    estimated_coverage: float
    n: int


def estimate_threshold(
    confidence: np.ndarray, correct: np.ndarray, target_precision: float
) -> ThresholdEstimate:
    """The lowest confidence at which accepted suggestions are still right often enough.

    `confidence`, `correct`: out-of-fold suggestions for labelled listings. Precision at a
    threshold t is the share right among those with confidence ≥ t; the threshold is the lowest
    t (the largest coverage) whose precision reaches the target, and the coverage is the share
    with confidence ≥ t. Lowest rather than "every higher t too": a handful of confidently wrong
    labels (sellers' mistakes) among the most confident would otherwise accept almost nothing.
    """
    n = len(confidence)
    if n == 0 or not correct.any():
        return ThresholdEstimate(target_precision, ACCEPT_NONE, None, 0.0, n)
    precision, _recall, thresholds = precision_recall_curve(correct.astype(int), confidence)
    precision = precision[:-1]  # the last point is the empty set by convention
    ok = np.flatnonzero(precision >= target_precision)
    if not len(ok):
        return ThresholdEstimate(target_precision, ACCEPT_NONE, None, 0.0, n)
    i = int(ok[0])
    threshold = float(thresholds[i])
    accepted = confidence >= threshold
    return ThresholdEstimate(
        target_precision, threshold, float(correct[accepted].mean()), float(accepted.mean()), n
    )


def threshold_sample(n: int, seed: int) -> np.ndarray:
    """At most THRESHOLD_SAMPLE of n rows, at random (fixed seed), in order."""
    if n <= THRESHOLD_SAMPLE:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, THRESHOLD_SAMPLE, replace=False))


def threshold_from_probabilities(
    probs: np.ndarray, labels: np.ndarray, target_precision: float
) -> ThresholdEstimate:
    """`estimate_threshold` on out-of-fold probabilities against the labels."""
    has_opinion = probs.max(axis=1) > 0
    confidence = np.where(has_opinion, probs.max(axis=1), 0.0)
    correct = has_opinion & (np.argmax(probs, axis=1) == labels)
    return estimate_threshold(confidence, correct, target_precision)


class ReviewReason(StrEnum):
    """Why a suggestion waits for a moderator, in the order they are checked."""

    low_confidence = "low_confidence"  # no category, or below the confidence threshold
    seller_disagrees = "seller_disagrees"  # confident, but not what the seller chose
    audit_sample = "audit_sample"  # confident and agreed, picked to measure confident errors


# The threshold when a clustering version has no estimate (made before estimates, or with too few
# labelled listings) and none is configured.
DEFAULT_CONFIDENCE_THRESHOLD = 0.6


def acceptance_threshold(estimate: ThresholdEstimate | None, settings: Settings) -> float:
    """The configured override, else the version's estimate for the target precision, else the default."""
    if settings.suggestions.confidence_threshold is not None:
        return settings.suggestions.confidence_threshold
    if estimate is not None:
        return estimate.threshold
    return DEFAULT_CONFIDENCE_THRESHOLD


def disagreement_threshold(threshold: float) -> float:
    """The confidence at which an out-of-fold suggestion that contradicts the seller is flagged.

    The acceptance threshold, but never above the default: the threshold is estimated against
    the sellers' own labels, and their wrong ones cap the precision it can show, so the more
    sellers err the higher it climbs (or no threshold reaches the target at all), which would
    silence exactly the flags that catch them.
    """
    return min(threshold, DEFAULT_CONFIDENCE_THRESHOLD)


def review_reason(
    listing_id: int,
    category: str | None,
    confidence: float,
    seller_category: str | None,
    settings: Settings,
    threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
) -> ReviewReason | None:
    """Why this suggestion goes to a moderator, or None when it is accepted without one.

    The suggestion of a labelled listing is out of fold (it never learnt from its own label), so
    a confident one that differs from the seller's category is evidence the seller chose wrong.
    """
    if category is None:
        return ReviewReason.low_confidence
    disagrees = seller_category is not None and seller_category != category
    if disagrees and confidence >= disagreement_threshold(threshold):
        return ReviewReason.seller_disagrees
    if confidence < threshold:
        return ReviewReason.low_confidence
    # Salted, so that the audited listings are not the ones sampled for overlays.
    if stable_fraction(f"audit:{listing_id}") < settings.suggestions.review_audit_rate:
        return ReviewReason.audit_sample
    return None


@dataclass(frozen=True)
class SuggestionRow:
    listing_id: int
    category: str | None
    confidence: float
    needs_review: bool
    # The decision is the one its stored overlay explains (same category, same or matching
    # cluster): nothing to explain again.
    explanation_kept: bool = False


def explanation_wanted(rows: Iterable[SuggestionRow], sample_rate: float) -> list[int]:
    """Listings whose suggestion needs a new Grad-CAM overlay: every flagged one, and a stable
    sample of the confident ones so that auditors can see what confident decisions look at;
    none whose decision is unchanged since its overlay was made."""
    return sorted(
        row.listing_id
        for row in rows
        if not row.explanation_kept
        and (row.needs_review or (sample_rate > 0 and stable_fraction(row.listing_id) < sample_rate))
    )
