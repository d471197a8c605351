"""The study's report: one PNG per figure and the HTML page that shows them with the tables."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from sklearn.metrics import confusion_matrix

from vitrine.evaluation.dataset import THUMBNAIL_SIZE, Dataset

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SAMPLES_PER_CLUSTER = 8
SAMPLE_SEED = 0
DPI = 110
CAPTIONS = {
    "ari": "ARI by model and reduction",
    "confusion": "Categories × clusters, best setting",
    "tsne": "t-SNE, coloured by category",
    "clusters": "Sample photos per cluster, best setting",
    "calibration": "Reliability of the confidence (first split), with the expected calibration error",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return path.name


def ari_figure(out: Path, results: list[dict[str, Any]]) -> str:
    """ARI per model, one bar per reduction, with the spread over seeds."""
    plt = _pyplot()
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
    return _save(fig, out / "ari.png")


def cluster_order(matrix: np.ndarray) -> list[int]:
    """Clusters ordered by their majority category, so a good clustering reads as a diagonal."""
    k = matrix.shape[1]
    return sorted(range(k), key=lambda c: (int(np.argmax(matrix[:, c])), -int(matrix[:, c].max())))


def category_cluster_counts(dataset: Dataset, assigned: np.ndarray, k: int) -> np.ndarray:
    categories = dataset.categories
    return confusion_matrix(
        [categories.index(label) for label in dataset.labels],
        assigned,
        labels=list(range(max(len(categories), k))),
    )[: len(categories), :k]


def confusion_figure(out: Path, best: dict[str, Any], dataset: Dataset) -> str:
    """Categories × clusters of the best setting's best seed."""
    plt = _pyplot()
    k = int(best["k"])
    counts = category_cluster_counts(dataset, best["assigned"], k)
    order = cluster_order(counts)
    matrix = counts[:, order]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k + 2.5, 1.0 + 0.45 * len(dataset.categories)))
    ax.imshow(matrix, cmap="Blues", aspect="auto")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = int(matrix[i, j])
            color = "white" if value > matrix.max() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(k), [str(c) for c in order])
    ax.set_yticks(range(len(dataset.categories)), dataset.categories)
    ax.set_xlabel("cluster")
    ax.set_title(f"{best['model']} / {best['reduction']}: ARI {best['ari_best']:.3f} (best seed)")
    return _save(fig, out / "confusion.png")


def tsne_figure(out: Path, dataset: Dataset, points: np.ndarray, model: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 6.5))
    cmap = plt.get_cmap("tab10" if len(dataset.categories) <= 10 else "tab20")
    for i, category in enumerate(dataset.categories):
        mask = np.array([label == category for label in dataset.labels])
        ax.scatter(*points[mask].T, s=8, color=cmap(i % cmap.N), label=category, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of {model} features, coloured by category")
    ax.legend(fontsize=8, markerscale=2, loc="best")
    return _save(fig, out / "tsne.png")


def clusters_figure(out: Path, best: dict[str, Any], dataset: Dataset) -> str:
    """A row of sample photos per cluster, labelled with its size and majority category."""
    plt = _pyplot()
    k, assigned = int(best["k"]), best["assigned"]
    counts = category_cluster_counts(dataset, assigned, k)
    order = cluster_order(counts)
    rng = np.random.default_rng(SAMPLE_SEED)
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
    majority = [dataset.categories[int(np.argmax(counts[:, c]))] for c in order]
    ax.set_yticklabels(
        [
            f"cluster {c} (n={int((assigned == c).sum())})\nmostly {m}"
            for c, m in zip(order, majority, strict=True)
        ],
        fontsize=7,
    )
    ax.set_title(f"Sample photos per cluster: {best['model']} / {best['reduction']}")
    return _save(fig, out / "clusters.png")


def calibration_figure(out: Path, suggestions: list[dict[str, Any]]) -> str:
    """Reliability diagram: per confidence bin, the share of suggestions that were right."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for row in suggestions:
        bins = row.get("calibration") or []
        if not bins:
            continue
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            marker="o",
            label=f"{row['model']} / {row['method']} (ECE {row['ece']:.3f})",
        )
    ax.set_xlabel("confidence")
    ax.set_ylabel("share right (held-out half)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Reliability diagram")
    return _save(fig, out / "calibration.png")


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html(out: Path, report: dict[str, Any]) -> Path:
    figures = report["figures"]
    best = report["best"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Vitrine evaluation</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style>",
        "</head><body><h1>Vitrine evaluation</h1>",
        f"<p>{report['n_images']} photos, {len(report['categories'])} categories, k={report['k']}, "
        f"seeds {report['seeds']}. Best: <b>{html.escape(best['model'])} / "
        f"{html.escape(best['reduction'])}</b>, ARI {best['ari']}.</p>",
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
                "ece",
                "threshold",
                "estimated_precision",
                "realised_precision",
                "estimated_coverage",
                "coverage_at_target",
            ],
        ),
        "<h2>Sellers' wrong categories caught (seller_disagrees)</h2>",
        _table(
            report.get("seller_noise", []),
            ["model", "method", "noise", "flag_precision", "flag_recall", "flagged", "replaced", "accuracy"],
        ),
        "<h2>Crops</h2>",
        _table(
            report.get("crops", []), ["model", "crop", "ari", "ari_std", "method", "accuracy", "accuracy_std"]
        ),
    ]
    for key, caption in CAPTIONS.items():
        if key in figures:
            parts.append(f"<h2>{caption}</h2><img src='{figures[key]}' alt='{caption}'>")
    parts.append(f"<h2>Unreadable images ({len(report['unreadable'])})</h2>")
    if report["unreadable"]:
        parts.append(_table(report["unreadable"], ["image", "reason", "detail"]))
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path
