"""Embeddings of the study's photos, through the embed worker's own path, cached on disk; reductions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from common.settings import Settings
from common.vision.backbone import Backbone
from common.vision.batch import embed_prepared, prepare_batch
from vitrine.evaluation.dataset import EvaluationError, read_photo

REDUCTIONS = ("none", "pca", "tsne")


PCA_VARIANCE = 0.90


TSNE_PCA_DIM = 50


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


def precision_cosine(fp32: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Cosine between each photo's fp32 and other-precision embeddings (both unit vectors)."""
    cosines = (fp32 * other).sum(axis=1)
    return {
        "cosine_mean": round(float(cosines.mean()), 5),
        "cosine_p05": round(float(np.percentile(cosines, 5)), 5),
        "cosine_min": round(float(cosines.min()), 5),
    }
