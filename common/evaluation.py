"""Offline study: how well do a backbone's clusters and suggestions match known categories?"""

from __future__ import annotations

import html
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
from sklearn.metrics import adjusted_rand_score, confusion_matrix, normalized_mutual_info_score
from sklearn.model_selection import train_test_split

from common.config import Settings, load_settings
from common.imaging import ImageRejected, decode_image
from common.suggest import SuggestionModel, cluster_label_shares

REDUCTIONS = ("none", "pca", "tsne")
METHODS = ("centroid", "knn")
PCA_VARIANCE = 0.90
TSNE_PCA_DIM = 50
LABELLED_SHARE = 0.5
SPLIT_SEED = 0
THUMBNAIL_SIZE = 96
SAMPLES_PER_CLUSTER = 8
# The live system's defaults, so that the study measures what actually runs.
_DEFAULTS = Settings.model_fields
CENTROID_TEMPERATURE = float(_DEFAULTS["centroid_temperature"].default)
KNN_NEIGHBOURS = int(_DEFAULTS["knn_neighbours"].default)
CONFIDENCE_THRESHOLD = float(_DEFAULTS["confidence_threshold"].default)

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


def _decode(path: Path, settings: Settings) -> Image.Image:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageRejected("unreadable_file", str(error)) from None  # type: ignore[arg-type]
    return decode_image(data, settings).image


def check_images(dataset: Dataset, settings: Settings) -> Dataset:
    """Decode every photo with the live system's safe decoder; unreadable ones are listed, not fatal."""
    kept = Dataset([], [], list(dataset.unreadable), dataset.unlabelled)
    for path, label in zip(dataset.paths, dataset.labels, strict=True):
        try:
            image = _decode(path, settings)
        except ImageRejected as error:
            kept.unreadable.append({"image": path.name, "reason": str(error.reason), "detail": error.detail})
            continue
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        kept.paths.append(path)
        kept.labels.append(label)
        kept.thumbnails.append(image)
    return kept


def embed_paths(
    backbone: Any,
    paths: Sequence[Path],
    settings: Settings,
    batch_size: int = 32,
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """L2-normalised pooled features, one forward pass per batch, as the embed worker computes them."""
    import torch

    chunks = []
    for start in range(0, len(paths), batch_size):
        batch = [backbone.preprocess(_decode(p, settings)) for p in paths[start : start + batch_size]]
        chunks.append(backbone.embed_tensors(torch.stack(batch)))
        if advance is not None:
            advance(len(batch))
    if not chunks:
        return np.zeros((0, backbone.dim), dtype=np.float32)
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
    best_ari, best_assigned, best_reduced = -math.inf, np.zeros(0), np.zeros(0)
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
    features: np.ndarray, labels: Sequence[str | None], k: int, method: str, seed: int = 0
) -> SuggestionModel:
    """The model a refit builds: KMeans on all unit vectors, category shares from the labelled ones."""
    if method not in METHODS:
        raise EvaluationError(f"unknown suggestion method {method!r}; choose from {', '.join(METHODS)}")
    centroids = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(features).cluster_centers_
    centroids = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    assigned = np.argmax(features @ centroids.T, axis=1)
    categories, shares, _summary = cluster_label_shares(assigned, list(labels), k)
    model = SuggestionModel(
        version_id=0,
        backbone_id="evaluation",
        centroids=centroids.astype(np.float32),
        categories=categories,
        cluster_shares=shares,
        method=method,
        temperature=CENTROID_TEMPERATURE,
        neighbours=KNN_NEIGHBOURS,
    )
    if method == "knn":
        index = {c: i for i, c in enumerate(categories)}
        known = np.array([label is not None for label in labels])
        model.reference_vectors = features[known]
        model.reference_labels = np.array([index[label] for label in labels if label is not None])
    return model


def suggestion_accuracy(
    features: np.ndarray, labels: Sequence[str], k: int, method: str, seed: int = SPLIT_SEED
) -> dict[str, Any]:
    """Accuracy of the suggestions for held-out listings when half the listings carry a category."""
    labelled, held_out = split_labelled(labels, seed)
    known: list[str | None] = [None] * len(labels)
    for i in labelled:
        known[i] = labels[i]
    scored = suggestion_model(features, known, k, method, seed).score(features[held_out])
    truth = [labels[i] for i in held_out]
    correct = np.array([s.category == t for s, t in zip(scored, truth, strict=True)])
    confidence = np.array([s.confidence for s in scored])
    confident = confidence >= CONFIDENCE_THRESHOLD
    return {
        "method": method,
        "accuracy": round(float(correct.mean()), 4),
        "n_labelled": len(labelled),
        "n_held_out": len(held_out),
        "mean_confidence": round(float(confidence.mean()), 4),
        "confidence_threshold": CONFIDENCE_THRESHOLD,
        "share_above_threshold": round(float(confident.mean()), 4),
        "accuracy_above_threshold": round(float(correct[confident].mean()), 4) if confident.any() else None,
    }


def suggestion_study(
    features: np.ndarray, labels: Sequence[str], k: int, method: str, seeds: Sequence[int]
) -> dict[str, Any]:
    """`suggestion_accuracy` over one stratified split per seed: the mean, its spread, every run."""
    runs = [suggestion_accuracy(features, labels, k, method, seed) for seed in seeds]
    summary: dict[str, Any] = {"method": method, "n_labelled": runs[0]["n_labelled"]}
    summary["n_held_out"] = runs[0]["n_held_out"]
    for key in ("accuracy", "mean_confidence", "share_above_threshold", "accuracy_above_threshold"):
        values = [r[key] for r in runs if r[key] is not None]
        summary[key] = round(float(np.mean(values)), 4) if values else None
    summary["accuracy_std"] = round(float(np.std([r["accuracy"] for r in runs])), 4)
    summary["accuracy_runs"] = [r["accuracy"] for r in runs]
    summary["confidence_threshold"] = CONFIDENCE_THRESHOLD
    return summary


def _figures(
    out: Path,
    results: list[dict[str, Any]],
    best: dict[str, Any],
    dataset: Dataset,
    tsne_points: np.ndarray,
    tsne_model: str,
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, str] = {}
    categories = dataset.categories

    models = list(dict.fromkeys(r["model"] for r in results))
    reductions = list(dict.fromkeys(r["reduction"] for r in results))
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(models) * len(reductions)), 4.5))
    width = 0.8 / len(reductions)
    for j, reduction in enumerate(reductions):
        rows = [
            next((r for r in results if r["model"] == m and r["reduction"] == reduction), None)
            for m in models
        ]
        xs = np.arange(len(models)) + (j - (len(reductions) - 1) / 2) * width
        means = [r["ari"] if r else 0.0 for r in rows]
        stds = [r["ari_std"] if r else 0.0 for r in rows]
        bars = ax.bar(xs, means, width, yerr=stds, capsize=4, label=reduction)
        ax.bar_label(bars, labels=[f"{m:.2f}" for m in means], padding=2, fontsize=8)
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_ylabel("ARI (mean ± std over seeds)")
    ax.set_ylim(0, 1)
    ax.set_title(f"KMeans clusters vs categories (k={results[0]['k']}, n={results[0]['n_images']})")
    ax.legend(title="reduction")
    fig.tight_layout()
    fig.savefig(out / "ari.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    files["ari"] = "ari.png"

    assigned = best["assigned"]
    k = int(best["k"])
    matrix = confusion_matrix(
        [categories.index(label) for label in dataset.labels],
        assigned,
        labels=list(range(max(len(categories), k))),
    )[: len(categories), :k]
    # Clusters ordered by their majority category, so a good clustering reads as a diagonal.
    order = sorted(range(k), key=lambda c: (int(np.argmax(matrix[:, c])), -int(matrix[:, c].max())))
    matrix = matrix[:, order]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k + 2.5, 1.0 + 0.45 * len(categories)))
    ax.imshow(matrix, cmap="Blues", aspect="auto")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = int(matrix[i, j])
            color = "white" if value > matrix.max() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(k), [str(c) for c in order])
    ax.set_yticks(range(len(categories)), categories)
    ax.set_xlabel("cluster")
    ax.set_title(f"{best['model']} / {best['reduction']}: ARI {best['ari_best']:.3f} (best seed)")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    files["confusion"] = "confusion.png"

    fig, ax = plt.subplots(figsize=(8, 6.5))
    cmap = plt.get_cmap("tab10" if len(categories) <= 10 else "tab20")
    for i, category in enumerate(categories):
        mask = np.array([label == category for label in dataset.labels])
        ax.scatter(*tsne_points[mask].T, s=8, color=cmap(i % cmap.N), label=category, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of {tsne_model} features, coloured by category")
    ax.legend(fontsize=8, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(out / "tsne.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    files["tsne"] = "tsne.png"

    rng = np.random.default_rng(SPLIT_SEED)
    size = THUMBNAIL_SIZE
    sheet = Image.new("RGB", (size * SAMPLES_PER_CLUSTER, size * k), "white")
    for row, cluster in enumerate(order):
        members = np.flatnonzero(assigned == cluster)
        picks = rng.choice(members, size=min(SAMPLES_PER_CLUSTER, len(members)), replace=False)
        for col, index in enumerate(picks):
            thumb = dataset.thumbnails[int(index)]
            sheet.paste(
                thumb, (col * size + (size - thumb.width) // 2, row * size + (size - thumb.height) // 2)
            )
    fig, ax = plt.subplots(figsize=(SAMPLES_PER_CLUSTER * 1.1 + 2.5, k * 1.1 + 0.6))
    ax.imshow(sheet)
    ax.set_xticks([])
    ax.set_yticks([size * (r + 0.5) for r in range(k)])
    ax.set_yticklabels(
        [
            f"cluster {c} (n={int((assigned == c).sum())})\nmostly {categories[int(np.argmax(matrix[:, r]))]}"
            for r, c in enumerate(order)
        ],
        fontsize=7,
    )
    ax.set_title(f"Sample photos per cluster: {best['model']} / {best['reduction']}")
    fig.tight_layout()
    fig.savefig(out / "clusters.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    files["clusters"] = "clusters.png"
    return files


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html(out: Path, report: dict[str, Any]) -> Path:
    figures = report["figures"]
    captions = {
        "ari": "ARI by model and reduction",
        "confusion": "Categories × clusters, best setting",
        "tsne": "t-SNE, coloured by category",
        "clusters": "Sample photos per cluster, best setting",
    }
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Vitrine evaluation</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style>",
        "</head><body><h1>Vitrine evaluation</h1>",
        f"<p>{report['n_images']} photos, {len(report['categories'])} categories, k={report['k']}, "
        f"seeds {report['seeds']}. Best: <b>{html.escape(report['best']['model'])} / "
        f"{html.escape(report['best']['reduction'])}</b>, ARI {report['best']['ari']}.</p>",
        "<h2>Clusters vs categories</h2>",
        _table(
            report["results"],
            ["model", "reduction", "dim", "k", "n_images", "ari", "ari_std", "nmi", "nmi_std"],
        ),
        "<h2>Suggestions for held-out listings</h2>",
        _table(
            report["suggestions"],
            [
                "model",
                "method",
                "accuracy",
                "accuracy_std",
                "n_labelled",
                "n_held_out",
                "mean_confidence",
                "share_above_threshold",
                "accuracy_above_threshold",
            ],
        ),
    ]
    for key, caption in captions.items():
        if key in figures:
            parts.append(f"<h2>{caption}</h2><img src='{figures[key]}' alt='{caption}'>")
    parts.append(f"<h2>Unreadable images ({len(report['unreadable'])})</h2>")
    if report["unreadable"]:
        parts.append(_table(report["unreadable"], ["image", "reason", "detail"]))
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path


def evaluate(
    paths: Sequence[Path],
    labels: dict[str, str],
    models: Sequence[ModelSpec],
    out: Path,
    *,
    reductions: Sequence[str] = REDUCTIONS,
    k: int | None = None,
    seeds: int = 3,
    limit: int | None = None,
    device: str = "auto",
    batch_size: int = 32,
    settings: Settings | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Embed the photos with each model, score clusters and suggestions, write OUT/report.*."""
    from common.vision import Backbone

    if not models:
        raise EvaluationError("give at least one --model")
    for reduction in reductions:
        if reduction not in REDUCTIONS:
            raise EvaluationError(f"unknown reduction {reduction!r}; choose from {', '.join(REDUCTIONS)}")
    if seeds < 1:
        raise EvaluationError("--seeds must be at least 1")
    for spec in models:
        spec.check()
    settings = settings or load_settings()
    dataset = select_images(paths, labels, limit)
    if not dataset.paths:
        raise EvaluationError("no image in the folder has a category in the label file")
    dataset = check_images(dataset, settings)
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
    out.mkdir(parents=True, exist_ok=True)
    seed_list = list(range(seeds))

    results: list[dict[str, Any]] = []
    suggestions: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    tsne_points: dict[str, np.ndarray] = {}
    features_by_model: dict[str, np.ndarray] = {}
    for spec in models:
        started = time.perf_counter()
        name = spec.label(models)
        backbone = Backbone.load(spec.name, spec.weights, device)
        advance = progress(f"embedding with {name}", len(dataset.paths)) if progress else None
        features = embed_paths(backbone, dataset.paths, settings, batch_size, advance)
        embed_seconds = time.perf_counter() - started
        features_by_model[name] = features
        for reduction in reductions:
            advance = progress(f"{name}: KMeans on {reduction}", 1) if progress else None
            summary, assigned, reduced = cluster_scores(features, dataset.labels, reduction, k, seed_list)
            row = {
                "model": name,
                "backbone_id": backbone.backbone_id,
                "pretrained": backbone.pretrained,
                "embed_seconds": round(embed_seconds, 2),
                **summary,
            }
            results.append(row)
            if reduction == "tsne":
                tsne_points[name] = reduced
            if best is None or row["ari"] > best["ari"]:
                best = {**row, "assigned": assigned, "ari_best": max(summary["ari_runs"])}
            if advance:
                advance(1)
        for method in METHODS:
            suggestions.append(
                {"model": name, **suggestion_study(features, dataset.labels, k, method, seed_list)}
            )
        del backbone

    assert best is not None
    tsne_model = best["model"]
    if tsne_model not in tsne_points:
        tsne_points[tsne_model] = reduce(features_by_model[tsne_model], "tsne", 0)
    figures = _figures(out, results, best, dataset, tsne_points[tsne_model], tsne_model)
    best_suggestion = max(suggestions, key=lambda s: s["accuracy"])
    report: dict[str, Any] = {
        "n_images": len(dataset.paths),
        "categories": {c: dataset.labels.count(c) for c in dataset.categories},
        "k": k,
        "seeds": seed_list,
        "reductions": list(reductions),
        "settings": {
            "pca_variance": PCA_VARIANCE,
            "tsne_pca_dim": TSNE_PCA_DIM,
            "labelled_share": LABELLED_SHARE,
            "centroid_temperature": CENTROID_TEMPERATURE,
            "knn_neighbours": KNN_NEIGHBOURS,
        },
        "results": results,
        "suggestions": suggestions,
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
        "figures": figures,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    write_html(out, report)
    return report
