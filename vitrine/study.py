"""The seed study: how well do a backbone's clusters and suggestions match known categories?

It embeds through the same path as the embed worker (`common.vision.prepare_batch`) and builds
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

from common.config import Settings
from common.imaging import FailureReason, ImageRejected, LoadedImage, decode_image
from common.suggest import SuggestionModel, cluster_label_shares, model_for_clusters
from common.vision import Backbone, embed_prepared, prepare_batch, resolve_device, resolve_precision
from vitrine import report as figures
from vitrine.report import THUMBNAIL_SIZE, write_html

REDUCTIONS = ("none", "pca", "tsne")
METHODS = ("centroid", "knn")
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

    @property
    def categories(self) -> list[str]:
        return sorted(set(self.labels))


def select_images(
    paths: Sequence[Path], labels: dict[str, str], limit: int | None = None, seed: int = SPLIT_SEED
) -> Dataset:
    """The photos that have a category; with `limit`, a stratified sample of that many."""
    labelled = [p for p in paths if p.name in labels]
    names = [labels[p.name] for p in labelled]
    unlabelled = len(paths) - len(labelled)
    if limit is None or limit >= len(labelled):
        return Dataset(labelled, names, unlabelled=unlabelled)
    n_categories = len(set(names))
    if limit < n_categories:
        raise EvaluationError(f"--limit {limit} is below the number of categories ({n_categories})")
    chosen, _rest = train_test_split(
        np.arange(len(labelled)), train_size=limit, stratify=names, random_state=seed
    )
    keep = sorted(int(i) for i in chosen)
    return Dataset([labelled[i] for i in keep], [names[i] for i in keep], unlabelled=unlabelled)


def load_photo(path: Path, settings: Settings) -> LoadedImage:
    """A photo file through the live system's safe decoder."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageRejected(FailureReason.fetch_failed, f"cannot read {path.name}: {error}") from None
    return decode_image(data, settings)


def check_images(dataset: Dataset, settings: Settings) -> Dataset:
    """Decode every photo with the live system's safe decoder; unreadable ones are listed, not fatal."""
    kept = Dataset([], [], list(dataset.unreadable), dataset.unlabelled)
    for path, label in zip(dataset.paths, dataset.labels, strict=True):
        try:
            image = load_photo(path, settings).image
        except ImageRejected as error:
            kept.unreadable.append({"image": path.name, "reason": str(error.reason), "detail": error.detail})
            continue
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        kept.paths.append(path)
        kept.labels.append(label)
        kept.thumbnails.append(image)
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
        prepared = prepare_batch(backbone, batch, lambda path: load_photo(path, settings))
        rejected = [p for p in prepared if p.error is not None]
        if rejected:  # check_images let only decodable photos through
            raise EvaluationError(f"{rejected[0].source.name}: {rejected[0].error}")
        chunks.append(embed_prepared(backbone, prepared))
        if advance is not None:
            advance(len(batch))
    return np.concatenate(chunks).astype(np.float32)


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
    features: np.ndarray, labels: Sequence[str | None], k: int, settings: Settings, seed: int = 0
) -> SuggestionModel:
    """The model a refit builds: KMeans on all unit vectors, category shares from the labelled ones."""
    centroids = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(features).cluster_centers_
    centroids = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    assigned = np.argmax(features @ centroids.T, axis=1)
    categories, shares, _summary = cluster_label_shares(assigned, list(labels), k)
    index = {c: i for i, c in enumerate(categories)}
    known = np.array([label is not None for label in labels])
    reference = (features[known], np.array([index[label] for label in labels if label is not None]))
    return model_for_clusters(0, "evaluation", centroids, categories, shares, settings, reference)


def suggestion_accuracy(
    features: np.ndarray, labels: Sequence[str], k: int, settings: Settings, seed: int = SPLIT_SEED
) -> dict[str, Any]:
    """Accuracy of the suggestions for held-out listings when half the listings carry a category."""
    labelled, held_out = split_labelled(labels, seed)
    known: list[str | None] = [None] * len(labels)
    for i in labelled:
        known[i] = labels[i]
    scored = suggestion_model(features, known, k, settings, seed).score(features[held_out])
    truth = [labels[i] for i in held_out]
    correct = np.array([s.category == t for s, t in zip(scored, truth, strict=True)])
    confidence = np.array([s.confidence for s in scored])
    confident = confidence >= settings.confidence_threshold
    return {
        "method": settings.suggestion_method,
        "accuracy": round(float(correct.mean()), 4),
        "n_labelled": len(labelled),
        "n_held_out": len(held_out),
        "mean_confidence": round(float(confidence.mean()), 4),
        "confidence_threshold": settings.confidence_threshold,
        "share_above_threshold": round(float(confident.mean()), 4),
        "accuracy_above_threshold": round(float(correct[confident].mean()), 4) if confident.any() else None,
    }


def suggestion_study(
    features: np.ndarray, labels: Sequence[str], k: int, settings: Settings, seeds: Sequence[int]
) -> dict[str, Any]:
    """`suggestion_accuracy` over one stratified split per seed: the mean, its spread, every run."""
    runs = [suggestion_accuracy(features, labels, k, settings, seed) for seed in seeds]
    summary: dict[str, Any] = {"method": settings.suggestion_method, "n_labelled": runs[0]["n_labelled"]}
    summary["n_held_out"] = runs[0]["n_held_out"]
    for key in ("accuracy", "mean_confidence", "share_above_threshold", "accuracy_above_threshold"):
        values = [r[key] for r in runs if r[key] is not None]
        summary[key] = round(float(np.mean(values)), 4) if values else None
    summary["accuracy_std"] = round(float(np.std([r["accuracy"] for r in runs])), 4)
    summary["accuracy_runs"] = [r["accuracy"] for r in runs]
    summary["confidence_threshold"] = settings.confidence_threshold
    return summary


@dataclass
class Study:
    """What the models measured, gathered for the report."""

    results: list[dict[str, Any]] = field(default_factory=list)
    suggestions: list[dict[str, Any]] = field(default_factory=list)
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


def study_model(
    study: Study,
    name: str,
    backbone: Backbone,
    dataset: Dataset,
    *,
    reductions: Sequence[str],
    k: int,
    seeds: list[int],
    settings: Settings,
    batch_size: int,
    progress: ProgressFactory | None,
) -> None:
    """Embed the photos with one model; score its clusters per reduction and its suggestions."""
    started = time.perf_counter()
    advance = progress(f"embedding with {name}", len(dataset.paths)) if progress else None
    features = embed_paths(backbone, dataset.paths, settings, batch_size, advance)
    embed_seconds = time.perf_counter() - started
    study.features[name] = features
    for reduction in reductions:
        advance = progress(f"{name}: KMeans on {reduction}", 1) if progress else None
        summary, assigned, reduced = cluster_scores(features, dataset.labels, reduction, k, seeds)
        row = {
            "model": name,
            "backbone_id": backbone.backbone_id,
            "pretrained": backbone.pretrained,
            "embed_seconds": round(embed_seconds, 2),
            **summary,
        }
        study.results.append(row)
        if reduction == "tsne":
            study.tsne_points[name] = reduced
        if study.best is None or row["ari"] > study.best["ari"]:
            study.best = {**row, "assigned": assigned, "ari_best": max(summary["ari_runs"])}
        if advance:
            advance(1)
    for method in METHODS:
        method_settings = settings.model_copy(update={"suggestion_method": method})
        study.suggestions.append(
            {"model": name, **suggestion_study(features, dataset.labels, k, method_settings, seeds)}
        )


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
    precision: str = "fp32",
) -> dict[str, Any]:
    """Embed the photos with each model, score clusters and suggestions, write OUT/report.*."""
    validate_options(models, reductions, seeds)
    resolve_precision(precision, resolve_device(device))  # before any work, not after fp32
    dataset = select_images(paths, labels, limit)
    if not dataset.paths:
        raise EvaluationError("no image in the folder has a category in the label file")
    dataset = check_images(dataset, settings)
    k = validate_dataset(dataset, k)
    out.mkdir(parents=True, exist_ok=True)
    seed_list = list(range(seeds))
    study = Study()
    # Another precision is measured beside fp32, on the same photos, in the same report.
    precisions = ["fp32"] if precision == "fp32" else ["fp32", precision]
    for spec, run_at in ((spec, p) for spec in models for p in precisions):
        backbone = Backbone.load(spec.name, spec.weights, device, precision=run_at)
        study_model(
            study,
            spec.label(models) + ("" if run_at == "fp32" else f" {run_at}"),
            backbone,
            dataset,
            reductions=reductions,
            k=k,
            seeds=seed_list,
            settings=settings,
            batch_size=batch_size,
            progress=progress,
        )
        del backbone  # one model in memory at a time
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
            "centroid_temperature": settings.centroid_temperature,
            "knn_neighbours": settings.knn_neighbours,
            "confidence_threshold": settings.confidence_threshold,
        },
        "results": study.results,
        "suggestions": study.suggestions,
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
    }
