"""Explanations of suggestions: which listings to explain, Grad-CAM PNGs into object storage, rows after.

The heatmap itself is `common.vision.gradcam`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.db import Database, until_available
from common.object_store import OVERLAYS, STORAGE_ERRORS, ObjectStore
from common.photos.decode import LoadedImage
from common.photos.failures import Fault, ImageRejected
from common.photos.fetch import http_client, load_image
from common.photos.transport import PhotoClient
from common.schema import ClusteringVersion, Listing, Suggestion
from common.settings import Settings
from common.vision.backbone import Backbone, weights_id
from common.vision.gradcam import Explanation, gradcam, has_classifier
from common.vision.overlay import render_pngs

log = logging.getLogger(__name__)

NO_CLUSTERING_VERSION = 0  # key segment `v0`: explained without a clustering (ImageNet target)
# Overlays are looked at on a screen: decode photos with at least this shorter side, not full size.
OVERLAY_MIN_SIDE = 512


def sanitize(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", part)


def overlay_prefix(listing_id: int) -> str:
    return f"{OVERLAYS}{listing_id}/"


def object_keys(listing_id: int, image_sha256: str, backbone_id: str, version: int) -> tuple[str, str]:
    """Content-addressed (overlay, heatmap) keys: the same inputs always name the same objects."""
    prefix = f"{overlay_prefix(listing_id)}{image_sha256}/{sanitize(backbone_id)}/v{version}"
    return f"{prefix}/overlay.png", f"{prefix}/heatmap.png"


@dataclass
class ExplainedListing:
    listing_id: int
    target: str
    overlay_key: str
    heatmap_key: str
    version: int
    written: bool  # False when both objects were already stored

    @property
    def keys(self) -> tuple[str, str]:
        return self.overlay_key, self.heatmap_key


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
    cluster: int
    centroid: np.ndarray | None
    has_suggestion: bool
    revision: int  # the listing's revision whose photo `image_url` is
    loaded: LoadedImage | None = None
    explanation: Explanation | None = None


def _plan(db: Database, listing_ids: Sequence[int], backbone: Backbone) -> tuple[list[_Work], ExplainReport]:
    """What to explain, and against which centroid; what to skip or refuse, in a fresh report."""
    report = ExplainReport()
    work: list[_Work] = []
    with db.transaction() as session:
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
                work.append(
                    _Work(
                        listing.id,
                        listing.image_url,
                        NO_CLUSTERING_VERSION,
                        -1,
                        None,
                        False,
                        listing.revision,
                    )
                )
                continue
            version = suggestion.clustering_version_id
            if suggestion.overlay_key is not None:
                # Keys are cleared whenever the decision changes: this one is still explained.
                report.skipped.append(listing.id)
                continue
            # The same weights at another precision (an int8 embed worker) explain the decision.
            if weights_id(suggestion.backbone_id) != backbone.weights_id:
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
            if suggestion.revision != listing.revision:
                # The suggestion is of a photo replaced since: the new one's comes with its embedding.
                report.skipped.append(listing.id)
                continue
            work.append(
                _Work(
                    listing.id,
                    listing.image_url,
                    version,
                    suggestion.cluster,
                    centroid,
                    True,
                    listing.revision,
                )
            )
    return work, report


def _load(
    item: _Work, settings: Settings, store: ObjectStore, client: PhotoClient, min_side: int
) -> ImageRejected | None:
    try:
        item.loaded = load_image(item.image_url, settings, store, client, min_side)
    except ImageRejected as error:
        return error
    except Exception as error:  # a bug, not the photo's fault: isolated, and retried like an outage
        log.exception("unexpected error loading listing %s", item.listing_id)
        return ImageRejected.internal(error)
    return None


def explain_listings(
    db: Database, listing_ids: Sequence[int], settings: Settings, backbone: Backbone, store: ObjectStore
) -> ExplainReport:
    """Explain these listings' suggestions; PNGs are stored before the rows point to them."""
    ids = sorted(set(map(int, listing_ids)))
    work, report = until_available(lambda: _plan(db, ids, backbone), "planning overlays")
    min_side = max(backbone.min_side, OVERLAY_MIN_SIDE)

    # One HTTP client for the batch: creating one per photo costs more than decoding it.
    with (
        http_client(settings) as client,
        ThreadPoolExecutor(settings.embed.decode_threads, thread_name_prefix="explain-load") as pool,
    ):
        errors = list(pool.map(lambda item: _load(item, settings, store, client, min_side), work))
    ready: list[_Work] = []
    for item, error in zip(work, errors, strict=True):
        if error is None:
            ready.append(item)
        elif error.fault != Fault.photo:  # the host, our store or a bug of ours: tried again
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
        except torch.OutOfMemoryError:
            # The device, not the photos: the batch is tried again later.
            log.warning("out of memory in Grad-CAM for %d listings; will retry", len(ready))
            report.retry.extend(item.listing_id for item in ready)
            ready = []
        except (RuntimeError, ValueError) as error:  # the model cannot be explained this way
            log.exception("Grad-CAM failed for listings %s", [item.listing_id for item in ready])
            for item in ready:
                report.failed[item.listing_id] = f"gradcam_failed: {type(error).__name__}: {error}"
            ready = []
        else:
            for item, explanation in zip(ready, explanations, strict=True):
                item.explanation = explanation

    _store_objects(ready, settings, backbone, store, report)
    recorded = until_available(lambda: _record(db, work, report), "recording overlays")
    _delete_superseded(store, settings.store.overlay_bucket, [report.explained[i] for i in recorded])
    return report


def _store_objects(
    ready: list[_Work], settings: Settings, backbone: Backbone, store: ObjectStore, report: ExplainReport
) -> None:
    if not ready:
        return
    try:
        store.ensure_bucket(settings.store.overlay_bucket)
    except STORAGE_ERRORS as error:
        log.warning("gradcam bucket unavailable (%s: %s); will retry", type(error).__name__, error)
        report.retry.extend(item.listing_id for item in ready)
        return
    for index, item in enumerate(ready):
        assert item.loaded is not None and item.explanation is not None
        overlay_key, heatmap_key = object_keys(
            item.listing_id, item.loaded.sha256, backbone.backbone_id, item.version
        )
        overlay, heatmap = render_pngs(item.loaded.image, item.explanation, backbone.transform)
        try:
            wrote_heatmap = store.put_bytes(settings.store.overlay_bucket, heatmap_key, heatmap, "image/png")
            # The overlay last: its key on the row means both objects exist.
            wrote_overlay = store.put_bytes(settings.store.overlay_bucket, overlay_key, overlay, "image/png")
        except STORAGE_ERRORS as error:
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


def _record(db: Database, work: list[_Work], report: ExplainReport) -> list[int]:
    """Point the rows at their overlays; returns the listings whose row took its overlay.

    Guarded by the decision explained (version and cluster): if a refit changed it meanwhile,
    the overlay is not recorded and the request is forgotten, so the sweep asks again for an
    overlay of the new decision. Guarded by the revision too: an overlay (or an error) of a
    photo replaced meanwhile is discarded; the new photo's suggestion asks for its own.
    """
    planned = {item.listing_id: item for item in work if item.has_suggestion}
    recorded = []
    with db.transaction() as session:
        # Locked until the commit, so a re-post lands before (seen here) or after (clears these).
        revisions: dict[int, int] = {
            listing_id: revision
            for listing_id, revision in session.execute(
                select(Listing.id, Listing.revision)
                .where(Listing.id.in_(sorted(planned)))
                .order_by(Listing.id)
                .with_for_update()
            )
        }
        for listing_id, done in report.explained.items():
            item = planned.get(listing_id)
            if item is None or revisions.get(listing_id) != item.revision:
                continue
            matched = session.execute(
                update(Suggestion)
                .where(
                    Suggestion.listing_id == listing_id,
                    Suggestion.clustering_version_id == item.version,
                    Suggestion.cluster == item.cluster,
                    Suggestion.revision == item.revision,
                )
                .values(
                    overlay_key=done.overlay_key,
                    heatmap_key=done.heatmap_key,
                    explain_target=done.target,
                    explain_error=None,
                    # The previous decision's overlay has been on view until now; its objects go
                    # with the other superseded ones (`_delete_superseded`).
                    previous_overlay_key=None,
                    previous_heatmap_key=None,
                    previous_explain_target=None,
                )
                .returning(Suggestion.listing_id)
            ).scalar_one_or_none()
            if matched is None:
                session.execute(
                    update(Suggestion)
                    .where(Suggestion.listing_id == listing_id, Suggestion.overlay_key.is_(None))
                    .values(explain_requested_at=None)
                )
            else:
                recorded.append(listing_id)
        for listing_id, reason in report.failed.items():
            item = planned.get(listing_id)
            if item is None or revisions.get(listing_id) == item.revision:
                record_explain_error(session, listing_id, reason)
    return recorded


def _delete_superseded(store: ObjectStore, bucket: str, done: list[ExplainedListing]) -> None:
    """A listing keeps only the overlay its row points to; older ones are deleted (best effort)."""
    for item in done:
        try:
            store.delete_prefix(bucket, overlay_prefix(item.listing_id), keep=frozenset(item.keys))
        except STORAGE_ERRORS as error:
            log.warning("superseded overlays of %s not deleted: %s", item.listing_id, error)


def record_explain_error(session: Session, listing_id: int, reason: str) -> None:
    session.execute(
        update(Suggestion).where(Suggestion.listing_id == listing_id).values(explain_error=reason[:2000])
    )


def record_explain_errors(db: Database, errors: dict[int, str]) -> None:
    with db.transaction() as session:
        for listing_id, reason in errors.items():
            record_explain_error(session, listing_id, reason)
