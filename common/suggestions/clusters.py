"""A clustering as suggestions use it: centroids and each cluster's share of each known category."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.schema import ClusteringVersion


@dataclass
class Clusters:
    """The clusters a suggestion model scores against (one clustering version of one backbone)."""

    version_id: int  # 0 until the version row exists (a refit sets it then)
    backbone_id: str
    centroids: np.ndarray  # k × d, unit rows
    categories: list[str]  # column order of every probability matrix
    shares: np.ndarray  # k × C: category shares among each cluster's labelled members

    def nearest(self, vectors: np.ndarray) -> np.ndarray:
        """Each vector's cluster: the centroid of highest cosine similarity."""
        return np.argmax(vectors @ self.centroids.T, axis=1)

    @classmethod
    def of_version(cls, version: ClusteringVersion) -> Clusters:
        """A stored version's clusters, its category shares read back from its stored counts."""
        categories = sorted({c for cluster in version.cluster_categories for c in cluster["counts"]})
        index = {c: i for i, c in enumerate(categories)}
        shares = np.zeros((version.k, len(categories)))
        for i, cluster in enumerate(version.cluster_categories):
            total = sum(cluster["counts"].values())
            for category, n in cluster["counts"].items():
                shares[i, index[category]] = n / total
        centroids = version.centroid_matrix().astype(np.float32)
        return cls(version.id, version.backbone_id, centroids, categories, shares)


def cluster_label_shares(
    assignments: np.ndarray, labels: list[str | None], k: int
) -> tuple[list[str], np.ndarray, list[dict[str, object]]]:
    """Per cluster: category shares among labelled members, and the majority with its share."""
    categories = sorted({label for label in labels if label is not None})
    index = {category: i for i, category in enumerate(categories)}
    counts = np.zeros((k, len(categories)), dtype=np.int64)
    for cluster, label in zip(assignments, labels, strict=True):
        if label is not None:
            counts[int(cluster), index[label]] += 1
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    summary: list[dict[str, object]] = []
    for cluster in range(k):
        if totals[cluster, 0] == 0:
            summary.append({"category": None, "share": 0.0, "labelled": 0, "counts": {}})
            continue
        best = int(np.argmax(counts[cluster]))
        summary.append(
            {
                "category": categories[best],
                "share": round(float(shares[cluster, best]), 4),
                "labelled": int(totals[cluster, 0]),
                "counts": {c: int(n) for c, n in zip(categories, counts[cluster], strict=True) if n},
            }
        )
    return categories, shares, summary
