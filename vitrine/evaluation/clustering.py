"""How well KMeans clusters of the embeddings match the known categories (ARI, NMI)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from vitrine.evaluation.features import reduce


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
