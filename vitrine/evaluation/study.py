"""The seed study: how well do a backbone's clusters and suggestions match known categories?

It embeds through the same path as the embed worker (`common.vision.batch.prepare_batch`) and
builds suggestions with the live system's code and the configured settings, so it measures what
runs. Its parts: `dataset`, `features`, `clustering`, `accuracy`; the report is `report`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.settings import Settings
from common.suggestions.model import METHODS
from common.vision.backbone import Backbone, resolve_device, resolve_precision
from vitrine.evaluation import report as figures
from vitrine.evaluation.accuracy import (
    CALIBRATION_BINS,
    LABELLED_SHARE,
    NOISE_SHARES,
    noise_study,
    suggestion_study,
)
from vitrine.evaluation.clustering import cluster_scores
from vitrine.evaluation.dataset import (
    Dataset,
    EvaluationError,
    ModelSpec,
    ProgressFactory,
    check_images,
    select_images,
)
from vitrine.evaluation.features import (
    PCA_VARIANCE,
    REDUCTIONS,
    TSNE_PCA_DIM,
    cached_embeddings,
    precision_cosine,
    reduce,
)
from vitrine.evaluation.report import write_html

CROPS = ("center", "full")


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
