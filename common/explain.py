"""Grad-CAM explanations of suggestions: heatmaps through the backbone's last feature stage, PNGs in S3."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import cv2
import httpx
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from timm.data import resolve_data_config

from common.config import Settings
from common.db import session_scope
from common.imaging import FailureReason, ImageRejected, LoadedImage, http_client, load_image
from common.models import ClusteringVersion, Listing, Suggestion
from common.storage import ObjectStore
from common.vision import Backbone

log = logging.getLogger(__name__)

TARGET_CENTROID = "centroid_similarity"
TARGET_IMAGENET = "imagenet_top1"
NO_CLUSTERING_VERSION = 0  # key segment `v0`: explained without a clustering (ImageNet target)
MAX_OVERLAY_SIDE = 1024  # moderators see a screen-sized image; full-size PNGs would be megabytes
OVERLAY_ALPHA = 0.5
RETRY_BASE_SECONDS = 5.0
RETRY_MAX_SECONDS = 600.0  # below the broker's visibility timeout, so a delayed retry is not redelivered
# Fetch failures may be an S3 or network outage: retried, never recorded as the listing's fault.
TRANSIENT_REASONS = (FailureReason.fetch_failed, FailureReason.fetch_timeout)


@dataclass(frozen=True)
class Explanation:
    heatmap: np.ndarray  # float32 in [0, 1], feature resolution (h, w)
    target: str  # TARGET_CENTROID or TARGET_IMAGENET
    score: float  # cosine similarity to the centroid, or the top ImageNet logit
    imagenet_class: int | None = None


def target_layer_name(model: torch.nn.Module) -> str:
    """The last feature stage, as timm's feature-info API names it (`stages.3` for ConvNeXt)."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no timm feature_info; cannot pick a Grad-CAM layer")
    return str(info[-1]["module"])


def has_classifier(model: torch.nn.Module) -> bool:
    return int(getattr(model, "num_classes", 0) or 0) > 0


def gradcam(
    backbone: Backbone, images: Sequence[Image.Image], centroids: Sequence[np.ndarray | None]
) -> list[Explanation]:
    """Grad-CAM for a batch of photos; a centroid per photo, or None for the top ImageNet class."""
    if not images:
        return []
    batch = torch.stack([backbone.preprocess(image) for image in images])
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
    colour = cv2.applyColorMap(np.uint8(np.round(heat * 255)), cv2.COLORMAP_JET)[:, :, ::-1]
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


def sanitize(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", part)


def object_keys(listing_id: int, image_sha256: str, backbone_id: str, version: int) -> tuple[str, str]:
    """Content-addressed (overlay, heatmap) keys: the same inputs always name the same objects."""
    prefix = f"gradcam/{listing_id}/{image_sha256}/{sanitize(backbone_id)}/v{version}"
    return f"{prefix}/overlay.png", f"{prefix}/heatmap.png"


def presigned_url(store: ObjectStore, settings: Settings, key: str) -> str:
    return store.presigned_get(settings.gradcam_bucket, key, settings.presign_expiry)


def retry_delay(attempt: int) -> float:
    """Exponential backoff for the n-th retry (1-based), capped."""
    return min(RETRY_BASE_SECONDS * 2 ** max(attempt - 1, 0), RETRY_MAX_SECONDS)


@dataclass
class ExplainedListing:
    listing_id: int
    target: str
    overlay_key: str
    heatmap_key: str
    version: int
    written: bool  # False when both objects were already stored


@dataclass
class ExplainReport:
    explained: dict[int, ExplainedListing] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)  # already explained, or nothing to explain
    failed: dict[int, str] = field(default_factory=dict)  # recorded in suggestion.explain_error
    retry: list[int] = field(default_factory=list)  # storage or fetch unavailable: try again later


@dataclass
class _Work:
    listing_id: int
    image_url: str
    version: int
    centroid: np.ndarray | None
    has_suggestion: bool
    loaded: LoadedImage | None = None
    explanation: Explanation | None = None


def _plan(listing_ids: Sequence[int], backbone: Backbone, report: ExplainReport) -> list[_Work]:
    work: list[_Work] = []
    with session_scope() as session:
        rows = session.execute(
            select(Listing, Suggestion)
            .outerjoin(Suggestion, Suggestion.listing_id == Listing.id)
            .where(Listing.id.in_(list(listing_ids)))
            .order_by(Listing.id)
        ).all()
        report.skipped.extend(sorted(set(listing_ids) - {listing.id for listing, _ in rows}))
        centroids: dict[int, np.ndarray] = {}
        for listing, suggestion in rows:
            if suggestion is None:
                if not has_classifier(backbone.model):
                    report.skipped.append(listing.id)
                    continue
                work.append(_Work(listing.id, listing.image_url, NO_CLUSTERING_VERSION, None, False))
                continue
            version = suggestion.clustering_version_id
            if (
                listing.image_sha256
                and suggestion.gradcam_key
                == (object_keys(listing.id, listing.image_sha256, backbone.backbone_id, version)[0])
            ):
                report.skipped.append(listing.id)
                continue
            if suggestion.backbone_id != backbone.backbone_id:
                report.failed[listing.id] = (
                    f"backbone_mismatch: suggested by {suggestion.backbone_id}, "
                    f"explainer is {backbone.backbone_id}"
                )
                continue
            if version not in centroids:
                clustering = session.get(ClusteringVersion, version)
                assert clustering is not None  # a foreign key
                centroids[version] = clustering.centroid_matrix()
            centroid = centroids[version][suggestion.cluster].astype(np.float32)
            centroid = centroid / max(float(np.linalg.norm(centroid)), 1e-12)
            work.append(_Work(listing.id, listing.image_url, version, centroid, True))
    return work


def _load(item: _Work, settings: Settings, store: ObjectStore, client: httpx.Client) -> ImageRejected | None:
    try:
        item.loaded = load_image(item.image_url, settings, store, client)
    except ImageRejected as error:
        return error
    except Exception as error:  # one bad photo never fails the others
        return ImageRejected(FailureReason.corrupt_image, f"{type(error).__name__}: {error}")
    return None


def explain_listings(
    listing_ids: Sequence[int], settings: Settings, backbone: Backbone, store: ObjectStore
) -> ExplainReport:
    """Explain these listings' suggestions; PNGs are stored before the rows point to them."""
    report = ExplainReport()
    work = _plan(sorted(set(map(int, listing_ids))), backbone, report)

    # One HTTP client for the batch: creating one per photo costs more than decoding it.
    with (
        http_client(settings) as client,
        ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="explain-load") as pool,
    ):
        errors = list(pool.map(lambda item: _load(item, settings, store, client), work))
    ready: list[_Work] = []
    for item, error in zip(work, errors, strict=True):
        if error is None:
            ready.append(item)
        elif error.reason in TRANSIENT_REASONS:
            report.retry.append(item.listing_id)
        else:
            report.failed[item.listing_id] = f"{error.reason}: {error.detail}"

    if ready:
        try:
            explanations = gradcam(
                backbone,
                [item.loaded.image for item in ready],  # type: ignore[union-attr]
                [item.centroid for item in ready],
            )
        except Exception as error:
            log.exception("Grad-CAM failed for listings %s", [item.listing_id for item in ready])
            for item in ready:
                report.failed[item.listing_id] = f"gradcam_failed: {type(error).__name__}: {error}"
            ready = []
        else:
            for item, explanation in zip(ready, explanations, strict=True):
                item.explanation = explanation

    _store_objects(ready, settings, backbone, store, report)
    _record(work, report)
    return report


def _store_objects(
    ready: list[_Work], settings: Settings, backbone: Backbone, store: ObjectStore, report: ExplainReport
) -> None:
    if not ready:
        return
    data_config = resolve_data_config({}, model=backbone.model)
    try:
        store.ensure_bucket(settings.gradcam_bucket)
    except Exception as error:
        log.warning("gradcam bucket unavailable (%s: %s); will retry", type(error).__name__, error)
        report.retry.extend(item.listing_id for item in ready)
        return
    for index, item in enumerate(ready):
        assert item.loaded is not None and item.explanation is not None
        overlay_key, heatmap_key = object_keys(
            item.listing_id, item.loaded.sha256, backbone.backbone_id, item.version
        )
        overlay, heatmap = render_pngs(item.loaded.image, item.explanation, data_config)
        try:
            wrote_heatmap = store.put_bytes(settings.gradcam_bucket, heatmap_key, heatmap, "image/png")
            # The overlay last: its key on the row means both objects exist.
            wrote_overlay = store.put_bytes(settings.gradcam_bucket, overlay_key, overlay, "image/png")
        except Exception as error:
            # Storage down or failing: stop hammering it; this and the rest are retried later.
            log.warning("storing Grad-CAM failed (%s: %s); will retry", type(error).__name__, error)
            report.retry.extend(i.listing_id for i in ready[index:])
            return
        report.explained[item.listing_id] = ExplainedListing(
            item.listing_id,
            item.explanation.target,
            overlay_key,
            heatmap_key,
            item.version,
            wrote_heatmap or wrote_overlay,
        )


def _record(work: list[_Work], report: ExplainReport) -> None:
    versions = {item.listing_id: item.version for item in work if item.has_suggestion}
    with session_scope() as session:
        for listing_id, done in report.explained.items():
            if listing_id not in versions:
                continue
            # Guarded by version: a refit meanwhile has cleared the keys, and they stay cleared.
            session.execute(
                update(Suggestion)
                .where(
                    Suggestion.listing_id == listing_id,
                    Suggestion.clustering_version_id == versions[listing_id],
                )
                .values(
                    gradcam_key=done.overlay_key,
                    heatmap_key=done.heatmap_key,
                    gradcam_target=done.target,
                    explain_error=None,
                )
            )
        for listing_id, reason in report.failed.items():
            record_explain_error(session, listing_id, reason)


def record_explain_error(session: Session, listing_id: int, reason: str) -> None:
    session.execute(
        update(Suggestion).where(Suggestion.listing_id == listing_id).values(explain_error=reason[:2000])
    )
