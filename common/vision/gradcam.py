"""Grad-CAM through a timm backbone's last feature stage: a heatmap on the model's feature grid.

No database and no storage here: `common.vision.overlay` draws it on the photo and
`common.jobs.explain` decides what to explain and stores the PNGs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common.vision.backbone import Backbone, TimmModel

TARGET_CENTROID = "centroid_similarity"
TARGET_IMAGENET = "imagenet_top1"


@dataclass(frozen=True)
class Explanation:
    heatmap: np.ndarray  # float32 in [0, 1], feature resolution (h, w)
    target: str  # TARGET_CENTROID or TARGET_IMAGENET
    score: float  # cosine similarity to the centroid, or the top ImageNet logit
    imagenet_class: int | None = None


def target_layer_name(model: TimmModel) -> str:
    """The last feature stage, as timm's feature-info API names it (`stages.3` for ConvNeXt)."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no timm feature_info; cannot pick a Grad-CAM layer")
    return str(info[-1]["module"])


def has_classifier(model: TimmModel) -> bool:
    return int(getattr(model, "num_classes", 0) or 0) > 0


def gradcam(
    backbone: Backbone, images: Sequence[Image.Image], centroids: Sequence[np.ndarray | None]
) -> list[Explanation]:
    """Grad-CAM for a batch of photos; a centroid per photo, or None for the top ImageNet class."""
    if not images:
        return []
    batch = torch.stack([backbone.prepare(image) for image in images])
    return gradcam_tensors(backbone, batch, centroids)


def gradcam_tensors(
    backbone: Backbone, batch: torch.Tensor, centroids: Sequence[np.ndarray | None]
) -> list[Explanation]:
    """One forward and one backward pass for the whole preprocessed batch."""
    if len(centroids) != len(batch):
        raise ValueError(f"{len(batch)} images but {len(centroids)} targets")
    model = backbone.model
    use_centroid = [c is not None for c in centroids]
    if not all(use_centroid) and not has_classifier(model):
        raise ValueError(f"{backbone.name} has no classifier: every image needs a centroid target")
    # Gradients are taken with respect to the last stage's output only: no parameter ever needs
    # one, so the layers before it build no autograd graph at all.
    model.requires_grad_(False)
    captured: list[torch.Tensor] = []

    def capture(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    handle = model.get_submodule(target_layer_name(model)).register_forward_hook(capture)
    try:
        with torch.enable_grad(), backbone.autocast():
            features = model.forward_features(backbone.to_device(batch))
            pooled = model.forward_head(features, pre_logits=True).float()
            scores = torch.zeros(len(batch), device=pooled.device)
            reported = torch.zeros(len(batch), device=pooled.device)
            classes = torch.full((len(batch),), -1, dtype=torch.long)
            if any(use_centroid):
                matrix = np.stack([c if c is not None else np.zeros(pooled.shape[1]) for c in centroids])
                targets = torch.as_tensor(matrix, dtype=torch.float32, device=pooled.device)
                # Grad-CAM is taken on the projection onto the unit centroid, |p|·cos(p, c): it
                # ranks centroids exactly as the cosine does (|p| is the same for every centroid),
                # while differentiating the normalisation adds a -cos·p/|p| term that rewards
                # suppressing the photo's own strongest features and lights up the background.
                projection = (pooled * targets).sum(dim=1)
                mask = torch.as_tensor(use_centroid, device=pooled.device)
                scores = torch.where(mask, projection, scores)
                reported = torch.where(mask, projection / pooled.norm(dim=1).clamp_min(1e-12), reported)
            if not all(use_centroid):
                logits = model.forward_head(features).float()
                top, top_class = logits.max(dim=1)
                mask = torch.as_tensor([not u for u in use_centroid], device=pooled.device)
                scores = torch.where(mask, top, scores)
                reported = torch.where(mask, top, reported)
                classes = top_class.cpu()
        if len(captured) != 1 or captured[0].dim() != 4:
            raise ValueError(f"{target_layer_name(model)} did not yield one NCHW feature map")
        activations = captured[0]
        # Each image's score depends only on its own activations (eval mode), so the gradient
        # of the sum gives every image its own gradient in one backward pass.
        (grads,) = torch.autograd.grad(scores.sum(), activations)
    finally:
        handle.remove()

    with torch.no_grad():
        weights = grads.float().mean(dim=(2, 3), keepdim=True)
        cams = F.relu((weights * activations.float()).sum(dim=1))
        low = cams.amin(dim=(1, 2), keepdim=True)
        span = cams.amax(dim=(1, 2), keepdim=True) - low
        cams = torch.where(span > 0, (cams - low) / span.clamp_min(1e-12), torch.zeros_like(cams))
        heatmaps = cams.cpu().numpy().astype(np.float32)
    values = reported.detach().cpu().tolist()
    return [
        Explanation(
            heatmap=heatmaps[i],
            target=TARGET_CENTROID if use_centroid[i] else TARGET_IMAGENET,
            score=float(values[i]),
            imagenet_class=None if use_centroid[i] else int(classes[i]),
        )
        for i in range(len(batch))
    ]
