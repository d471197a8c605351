"""Grad-CAM through a timm backbone's last feature stage, and the PNGs moderators see.

No database and no storage here: `common.jobs.explain` decides what to explain and stores the PNGs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from common.vision.backbone import Backbone, TimmModel

TARGET_CENTROID = "centroid_similarity"
TARGET_IMAGENET = "imagenet_top1"
MAX_OVERLAY_SIDE = 1024  # moderators see a screen-sized image; full-size PNGs would be megabytes
OVERLAY_ALPHA = 0.5


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


def crop_box(photo_size: tuple[int, int], data_config: dict[str, Any]) -> tuple[int, int, int, int]:
    """The part of the photo the model saw, (left, top, right, bottom), under timm's eval transform."""
    width, height = photo_size
    _, in_h, in_w = data_config["input_size"]
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    mode = data_config.get("crop_mode") or "center"
    if mode == "squash":
        box_w, box_h = width * crop_pct, height * crop_pct
    elif mode == "center" and in_h == in_w:
        # Shorter side resized to input/crop_pct, then an input-sized centre crop.
        scale = math.floor(in_h / crop_pct) / min(width, height)
        box_w, box_h = min(width, in_w / scale), min(height, in_h / scale)
    else:
        box_w, box_h = width, height
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return round(left), round(top), round(left + box_w), round(top + box_h)


def heatmap_on_photo(
    heatmap: np.ndarray, photo_size: tuple[int, int], box: tuple[int, int, int, int]
) -> np.ndarray:
    """The heatmap resized onto the photo's pixels; zero where the model saw nothing."""
    width, height = photo_size
    left, top, right, bottom = box
    full = np.zeros((height, width), dtype=np.float32)
    if right > left and bottom > top:
        resized = cv2.resize(heatmap, (right - left, bottom - top), interpolation=cv2.INTER_LINEAR)
        full[top:bottom, left:right] = np.clip(resized, 0.0, 1.0)
    return full


def render_pngs(
    photo: Image.Image, explanation: Explanation, data_config: dict[str, Any]
) -> tuple[bytes, bytes]:
    """(overlay PNG: colour-mapped heatmap blended over the photo, raw heatmap PNG: 8-bit grey)."""
    photo = photo.convert("RGB")
    if max(photo.size) > MAX_OVERLAY_SIDE:
        photo = photo.copy()
        photo.thumbnail((MAX_OVERLAY_SIDE, MAX_OVERLAY_SIDE), Image.Resampling.BICUBIC)
    box = crop_box(photo.size, data_config)
    heat = heatmap_on_photo(explanation.heatmap, photo.size, box)
    colour = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    pixels = np.asarray(photo, dtype=np.float32)
    blended = pixels.copy()
    left, top, right, bottom = box
    blended[top:bottom, left:right] = (1 - OVERLAY_ALPHA) * pixels[top:bottom, left:right] + (
        OVERLAY_ALPHA * colour[top:bottom, left:right]
    )
    overlay = _png(Image.fromarray(np.uint8(np.clip(np.round(blended), 0, 255))))

    info = PngInfo()
    info.add_text("target", explanation.target)
    # Where the feature grid sits on the photo, as fractions of its width and height.
    w, h = photo.size
    info.add_text("crop_box", ",".join(f"{v:.4f}" for v in (left / w, top / h, right / w, bottom / h)))
    raw = _png(Image.fromarray(np.uint8(np.round(explanation.heatmap * 255)), mode="L"), info)
    return overlay, raw


def _png(image: Image.Image, info: PngInfo | None = None) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
