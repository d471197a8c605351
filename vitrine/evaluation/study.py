"""The seed study: how well do a backbone's clusters and suggestions match known categories?

It embeds through the same path as the embed worker (`common.vision.backbone.prepare_batch`) and builds
suggestions with the live system's code and the configured settings, so it measures what runs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.model_selection import train_test_split

from common.photos.decode import LoadedImage, decode_image
from common.photos.failures import FailureReason, ImageRejected
from common.settings import Settings
from common.suggestions.clusters import Clusters, cluster_label_shares
from common.suggestions.fitting import fit_suggestion_model
from common.suggestions.model import METHODS, SuggestionModel
from common.suggestions.policy import ReviewReason, review_reason
from common.suggestions.scorers import LabelledSet
from common.vision.backbone import Backbone, resolve_device, resolve_precision
from common.vision.batch import embed_prepared, prepare_batch
from vitrine.evaluation import report as figures
from vitrine.evaluation.report import THUMBNAIL_SIZE, write_html

REDUCTIONS = ("none", "pca", "tsne")
CROPS = ("center", "full")
# Shares of the labelled half given a wrong category, to measure how sellers' mistakes are caught.
NOISE_SHARES = (0.1, 0.2)
CALIBRATION_BINS = 10
PCA_VARIANCE = 0.90
TSNE_PCA_DIM = 50
LABELLED_SHARE = 0.5
SPLIT_SEED = 0

# start(description, total) → advance(n)
ProgressFactory = Callable[[str, int], Callable[[int], None]]


class EvaluationError(ValueError):
    """The inputs cannot be evaluated as given; the message says why."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    weights: Path | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """`NAME` or `NAME=WEIGHTS`."""
        name, _, weights = text.partition("=")
        if not name.strip():
            raise EvaluationError(f"model {text!r}: expected NAME or NAME=WEIGHTS")
        return cls(name.strip(), Path(weights.strip()) if weights.strip() else None)

    def label(self, models: Sequence[ModelSpec]) -> str:
        """The name, with the weights file when the same model is evaluated with several."""
        if sum(m.name == self.name for m in models) == 1:
            return self.name
        return f"{self.name} ({self.weights.name if self.weights else 'default weights'})"

    def check(self) -> None:
        """Fail before any work for a name timm does not know or a missing weights file."""
        import timm

        if not timm.is_model(self.name) and not timm.list_models(self.name.split(".")[0]):
            raise EvaluationError(f"unknown timm model {self.name!r}")
        if self.weights is not None and not self.weights.is_file():
            raise EvaluationError(f"weights file for {self.name!r} not found: {self.weights}")


@dataclass
class Dataset:
    """The photos to evaluate, their categories, and what was left out and why."""

    paths: list[Path]
    labels: list[str]
    unreadable: list[dict[str, str]] = field(default_factory=list)
    unlabelled: int = 0
    thumbnails: list[Image.Image] = field(default_factory=list)
    # Each photo's listing title when the label file has a title column; None: no titles at all.
    titles: list[str | None] | None = None

    @property
    def categories(self) -> list[str]:
        return sorted(set(self.labels))


def select_images(
    paths: Sequence[Path],
    labels: dict[str, str],
    limit: int | None = None,
    seed: int = SPLIT_SEED,
    titles: dict[str, str] | None = None,
) -> Dataset:
    """The photos that have a category; with `limit`, a stratified sample of that many."""
    labelled = [p for p in paths if p.name in labels]
    names = [labels[p.name] for p in labelled]
    unlabelled = len(paths) - len(labelled)

    def titled(chosen: list[Path]) -> list[str | None] | None:
        return [titles.get(p.name) or None for p in chosen] if titles is not None else None

    if limit is None or limit >= len(labelled):
        return Dataset(labelled, names, unlabelled=unlabelled, titles=titled(labelled))
    n_categories = len(set(names))
    if limit < n_categories:
        raise EvaluationError(f"--limit {limit} is below the number of categories ({n_categories})")
    chosen, _rest = train_test_split(
        np.arange(len(labelled)), train_size=limit, stratify=names, random_state=seed
    )
    keep = sorted(int(i) for i in chosen)
    kept = [labelled[i] for i in keep]
    return Dataset(kept, [names[i] for i in keep], unlabelled=unlabelled, titles=titled(kept))


def read_photo(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ImageRejected(FailureReason.fetch_failed, f"cannot read {path.name}: {error}") from None


def load_photo(path: Path, settings: Settings) -> LoadedImage:
    """A photo file through the live system's safe decoder."""
    return decode_image(read_photo(path), settings)


def check_images(dataset: Dataset, settings: Settings) -> Dataset:
    """Decode every photo with the live system's safe decoder; unreadable ones are listed, not fatal."""
    kept = Dataset([], [], list(dataset.unreadable), dataset.unlabelled)
    titles = dataset.titles if dataset.titles is not None else [None] * len(dataset.paths)
    kept_titles: list[str | None] = []
    for path, label, title in zip(dataset.paths, dataset.labels, titles, strict=True):
        try:
            image = load_photo(path, settings).image
        except ImageRejected as error:
            kept.unreadable.append({"image": path.name, "reason": str(error.reason), "detail": error.detail})
            continue
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        kept.paths.append(path)
        kept.labels.append(label)
        kept.thumbnails.append(image)
        kept_titles.append(title)
    kept.titles = kept_titles if dataset.titles is not None else None
    return kept


def embed_paths(
    backbone: Backbone,
    paths: Sequence[Path],
    settings: Settings,
    batch_size: int = 32,
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """L2-normalised pooled features, one forward pass per batch, through the embed worker's path."""
    chunks = [np.zeros((0, backbone.dim), dtype=np.float32)]
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        prepared = prepare_batch(backbone, batch, read_photo, settings)
        rejected = [p for p in prepared if p.error is not None]
        if rejected:  # check_images let only decodable photos through
            raise EvaluationError(f"{rejected[0].source.name}: {rejected[0].error}")
        chunks.append(embed_prepared(backbone, prepared))
        if advance is not None:
            advance(len(batch))
    return np.concatenate(chunks).astype(np.float32)


def cached_embeddings(
    backbone: Backbone,
    paths: Sequence[Path],
    settings: Settings,
    cache: Path | None,
    batch_size: int = 32,
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """`embed_paths`, kept in `cache` per backbone id (weights and crop) and list of photo names.

    A second evaluation of the same folder reads the vectors instead of embedding again.
    """
    if cache is None:
        return embed_paths(backbone, paths, settings, batch_size, advance)
    names = np.array([path.name for path in paths])
    file = cache / (backbone.backbone_id.replace("/", "_").replace("@", "_") + ".npz")
    if file.is_file():
        with np.load(file) as stored:
            if np.array_equal(stored["names"], names):
                if advance is not None:
                    advance(len(paths))
                return np.asarray(stored["features"], dtype=np.float32)
    features = embed_paths(backbone, paths, settings, batch_size, advance)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(file, names=names, features=features)
    return features


def reduce(features: np.ndarray, reduction: str, seed: int = 0) -> np.ndarray:
    """Features as KMeans sees them; every reduction is fitted without the labels."""
    if reduction == "none":
        return features
    if reduction == "pca":
        return PCA(n_components=PCA_VARIANCE, svd_solver="full").fit_transform(features)
    if reduction == "tsne":
        n_components = min(TSNE_PCA_DIM, *features.shape)
        reduced = PCA(n_components=n_components, random_state=seed).fit_transform(features)
        # Perplexity must stay below the number of points for small folders.
        perplexity = min(30.0, max(2.0, (len(features) - 1) / 3))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
            reduced
        )
    raise EvaluationError(f"unknown reduction {reduction!r}; choose from {', '.join(REDUCTIONS)}")


def cluster_scores(
    features: np.ndarray, labels: Sequence[str], reduction: str, k: int, seeds: Sequence[int]
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """ARI and NMI of KMeans on the reduced features over several seeds.

    Also returns the assignment and the reduced features of the best seed (for the figures).
    """
    aris, nmis = [], []
    best_ari, best_assigned, best_reduced = -math.inf, np.zeros(0), np.zeros((0, 0))
    for seed in seeds:
        reduced = reduce(features, reduction, seed)
        assigned = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(reduced)
        ari = float(adjusted_rand_score(labels, assigned))
        aris.append(ari)
        nmis.append(float(normalized_mutual_info_score(labels, assigned)))
        if ari > best_ari:
            best_ari, best_assigned, best_reduced = ari, assigned, reduced
    summary = {
        "reduction": reduction,
        "k": k,
        "n_images": len(labels),
        "dim": int(best_reduced.shape[1]),
        "seeds": list(seeds),
        "ari": round(float(np.mean(aris)), 4),
        "ari_std": round(float(np.std(aris)), 4),
        "nmi": round(float(np.mean(nmis)), 4),
        "nmi_std": round(float(np.std(nmis)), 4),
        "ari_runs": [round(a, 4) for a in aris],
    }
    return summary, best_assigned, best_reduced


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


@dataclass
class Study:
    """What the models measured, gathered for the report."""

    results: list[dict[str, Any]] = field(default_factory=list)
    suggestions: list[dict[str, Any]] = field(default_factory=list)
    seller_noise: list[dict[str, Any]] = field(default_factory=list)
    crops: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    tsne_points: dict[str, np.ndarray] = field(default_factory=dict)
    features: dict[str, np.ndarray] = field(default_factory=dict)


def validate_options(models: Sequence[ModelSpec], reductions: Sequence[str], seeds: int) -> None:
    """Refuse options that cannot be evaluated before any photo is read."""
    if not models:
        raise EvaluationError("give at least one --model")
    for reduction in reductions:
        if reduction not in REDUCTIONS:
            raise EvaluationError(f"unknown reduction {reduction!r}; choose from {', '.join(REDUCTIONS)}")
    if seeds < 1:
        raise EvaluationError("--seeds must be at least 1")
    for spec in models:
        spec.check()


def validate_dataset(dataset: Dataset, k: int | None) -> int:
    """Refuse a folder that cannot be evaluated before any photo is embedded; returns k."""
    n_categories = len(dataset.categories)
    k = k or n_categories
    if k < 2:
        raise EvaluationError(f"k={k}: need at least 2 clusters (categories found: {n_categories})")
    if len(dataset.paths) < k:
        raise EvaluationError(f"{len(dataset.paths)} readable labelled images are fewer than k={k}")
    if len(dataset.paths) < 2 * n_categories:
        raise EvaluationError(
            f"{len(dataset.paths)} images cannot be split into labelled and held-out halves "
            f"over {n_categories} categories"
        )
    return k


def methods_for(dataset: Dataset) -> list[str]:
    """Every method; the title-reading ones only when the label file gave titles."""
    return [m for m in METHODS if dataset.titles is not None or m not in ("title", "fused")]


def study_model(
    study: Study,
    name: str,
    spec: ModelSpec,
    dataset: Dataset,
    *,
    reductions: Sequence[str],
    k: int,
    seeds: list[int],
    settings: Settings,
    batch_size: int,
    progress: ProgressFactory | None,
    device: str = "auto",
    crops: Sequence[str] = (),
    cache: Path | None = None,
    precision: str = "fp32",
) -> None:
    """Embed the photos with one model; score its clusters per reduction, its suggestions by
    method, how it catches sellers' wrong categories, and its clusters and suggestions per crop."""
    features: np.ndarray | None = None
    for crop in [settings.backbone.crop, *[c for c in crops if c != settings.backbone.crop]]:
        backbone = Backbone.load(spec.name, spec.weights, device, precision=precision, crop=crop)
        started = time.perf_counter()
        advance = progress(f"embedding with {name} ({crop})", len(dataset.paths)) if progress else None
        crop_features = cached_embeddings(backbone, dataset.paths, settings, cache, batch_size, advance)
        embed_seconds = time.perf_counter() - started
        if crop == settings.backbone.crop:
            features = crop_features
            backbone_id, pretrained = backbone.backbone_id, backbone.pretrained
        del backbone  # one model in memory at a time
        if crop in crops:
            summary, _assigned, _reduced = cluster_scores(crop_features, dataset.labels, "none", k, seeds)
            accuracy = suggestion_study(crop_features, dataset.labels, k, settings, seeds, dataset.titles)
            study.crops.append(
                {
                    "model": name,
                    "crop": crop,
                    "ari": summary["ari"],
                    "ari_std": summary["ari_std"],
                    "method": settings.suggestions.suggestion_method,
                    "accuracy": accuracy["accuracy"],
                    "accuracy_std": accuracy["accuracy_std"],
                    "coverage_at_target": accuracy["coverage_at_target"],
                    "embed_seconds": round(embed_seconds, 2),
                }
            )
    assert features is not None
    study.features[name] = features
    for reduction in reductions:
        advance = progress(f"{name}: KMeans on {reduction}", 1) if progress else None
        summary, assigned, reduced = cluster_scores(features, dataset.labels, reduction, k, seeds)
        row = {
            "model": name,
            "backbone_id": backbone_id,
            "pretrained": pretrained,
            "crop": settings.backbone.crop,
            **summary,
        }
        study.results.append(row)
        if reduction == "tsne":
            study.tsne_points[name] = reduced
        if study.best is None or row["ari"] > study.best["ari"]:
            study.best = {**row, "assigned": assigned, "ari_best": max(summary["ari_runs"])}
        if advance:
            advance(1)
    methods = methods_for(dataset)
    advance = progress(f"{name}: suggestions by method", len(methods)) if progress else None
    for method in methods:
        method_settings = settings.replace(suggestion_method=method)
        study.suggestions.append(
            {
                "model": name,
                **suggestion_study(features, dataset.labels, k, method_settings, seeds, dataset.titles),
            }
        )
        for row in noise_study(features, dataset.labels, k, method_settings, seeds, dataset.titles):
            study.seller_noise.append({"model": name, **row})
        if advance:
            advance(1)


def evaluate(
    paths: Sequence[Path],
    labels: dict[str, str],
    models: Sequence[ModelSpec],
    out: Path,
    settings: Settings,
    *,
    reductions: Sequence[str] = REDUCTIONS,
    k: int | None = None,
    seeds: int = 3,
    limit: int | None = None,
    device: str = "auto",
    batch_size: int = 32,
    progress: ProgressFactory | None = None,
    titles: dict[str, str] | None = None,
    crops: Sequence[str] = CROPS,
    cache: Path | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Embed the photos with each model, score clusters and suggestions, write OUT/report.*.

    `titles`: listing titles by image name (the title and fused methods need them); `crops`:
    the preprocessing crops to compare; `cache`: a folder keeping the embeddings between runs.
    """
    validate_options(models, reductions, seeds)
    for crop in crops:
        if crop not in CROPS:
            raise EvaluationError(f"unknown crop {crop!r}; choose from {', '.join(CROPS)}")
    resolve_precision(precision, resolve_device(device))  # before any work, not after fp32
    dataset = select_images(paths, labels, limit, titles=titles)
    if not dataset.paths:
        raise EvaluationError("no image in the folder has a category in the label file")
    dataset = check_images(dataset, settings)
    k = validate_dataset(dataset, k)
    out.mkdir(parents=True, exist_ok=True)
    seed_list = list(range(seeds))
    study = Study()
    # Another precision is measured beside fp32, on the same photos, in the same report (at the
    # configured crop only: the crop comparison is fp32's).
    precisions = ["fp32"] if precision == "fp32" else ["fp32", precision]
    for spec, run_at in ((spec, p) for spec in models for p in precisions):
        study_model(
            study,
            spec.label(models) + ("" if run_at == "fp32" else f" {run_at}"),
            spec,
            dataset,
            reductions=reductions,
            k=k,
            seeds=seed_list,
            settings=settings,
            batch_size=batch_size,
            progress=progress,
            device=device,
            crops=crops if run_at == "fp32" else (),
            cache=cache,
            precision=run_at,
        )
    report = build_report(study, dataset, k, seed_list, reductions, settings)
    report["precision_cosine"] = [
        precision_cosine(
            study.features[spec.label(models)], study.features[f"{spec.label(models)} {precision}"]
        )
        | {"model": spec.label(models), "precision": precision}
        for spec in models
        if precision != "fp32"
    ]
    report["figures"] = draw_figures(out, study, dataset)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    write_html(out, report)
    return report


def precision_cosine(fp32: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Cosine between each photo's fp32 and other-precision embeddings (both unit vectors)."""
    cosines = (fp32 * other).sum(axis=1)
    return {
        "cosine_mean": round(float(cosines.mean()), 5),
        "cosine_p05": round(float(np.percentile(cosines, 5)), 5),
        "cosine_min": round(float(cosines.min()), 5),
    }


def build_report(
    study: Study,
    dataset: Dataset,
    k: int,
    seeds: list[int],
    reductions: Sequence[str],
    settings: Settings,
) -> dict[str, Any]:
    best = study.best
    assert best is not None
    best_suggestion = max(study.suggestions, key=lambda s: s["accuracy"])
    return {
        "n_images": len(dataset.paths),
        "categories": {c: dataset.labels.count(c) for c in dataset.categories},
        "k": k,
        "seeds": seeds,
        "reductions": list(reductions),
        "settings": {
            "pca_variance": PCA_VARIANCE,
            "tsne_pca_dim": TSNE_PCA_DIM,
            "labelled_share": LABELLED_SHARE,
            "centroid_temperature": settings.suggestions.centroid_temperature,
            "knn_neighbours": settings.suggestions.knn_neighbours,
            "confidence_threshold": settings.suggestions.confidence_threshold,
            "target_precision": settings.suggestions.target_precision,
            "crop": settings.backbone.crop,
            "noise_shares": list(NOISE_SHARES),
            "calibration_bins": CALIBRATION_BINS,
        },
        "results": study.results,
        "suggestions": study.suggestions,
        "seller_noise": study.seller_noise,
        "crops": study.crops,
        "best": {key: value for key, value in best.items() if key != "assigned"},
        "best_suggestion": {
            "model": best_suggestion["model"],
            "method": best_suggestion["method"],
            "accuracy": best_suggestion["accuracy"],
        },
        # Where each photo landed under the best setting (its best seed), for inspection.
        "assignments": [
            {"image": path.name, "category": label, "cluster": int(cluster)}
            for path, label, cluster in zip(dataset.paths, dataset.labels, best["assigned"], strict=True)
        ],
        "unreadable": dataset.unreadable,
        "unlabelled_images": dataset.unlabelled,
    }


def draw_figures(out: Path, study: Study, dataset: Dataset) -> dict[str, str]:
    best = study.best
    assert best is not None
    model = best["model"]
    if model not in study.tsne_points:
        study.tsne_points[model] = reduce(study.features[model], "tsne", 0)
    return {
        "ari": figures.ari_figure(out, study.results),
        "confusion": figures.confusion_figure(out, best, dataset),
        "tsne": figures.tsne_figure(out, dataset, study.tsne_points[model], model),
        "clusters": figures.clusters_figure(out, best, dataset),
        "calibration": figures.calibration_figure(out, study.suggestions),
    }
