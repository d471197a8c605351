"""What several test modules use: real photos, bad image bytes made from them, seeded listings."""

from __future__ import annotations

import csv
from collections.abc import Callable
from io import BytesIO
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from sqlalchemy import select

from common.db import Database
from common.jobs.embed import EmbedPipeline
from common.jobs.refit import refit
from common.object_store import ObjectStore
from common.photos.failures import FailureReason, ImageRejected
from common.schema import Listing, ListingStatus, Suggestion
from common.settings import Settings, load_settings
from common.vision.backbone import Backbone
from tests.conftest import FLIPKART, ROOT


def real_jpeg(index: int = 0) -> bytes:
    return sorted((FLIPKART / "images").glob("*.jpg"))[index].read_bytes()


def jpeg_bytes(image: Image.Image, **save: object) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=92, **save)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    data = real_jpeg(1)
    return data[: len(data) // 2]


def decompression_bomb() -> bytes:
    """A few KB of PNG that declares 12,000 × 12,000 pixels (144 M)."""
    buffer = BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def animated_gif() -> bytes:
    buffer = BytesIO()
    frames = [Image.new("RGB", (32, 32), color) for color in ("red", "blue")]
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def flipkart_rows(category: str | None = None) -> list[dict[str, str]]:
    with open(FLIPKART / "labels.csv", newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: row["image"])
    return [row for row in rows if category is None or row["category"] == category]


def seed_listings(
    db: Database, settings: Settings, store: ObjectStore, backbone: Backbone, rows: list[dict[str, str]]
) -> dict[str, int]:
    """Listings embedded by the real pipeline and suggested by a real refit."""
    store.ensure_bucket(settings.store.images_bucket)
    ids = {}
    with db.transaction() as session:
        for row in rows:
            listing = Listing(
                external_id=row["uniq_id"],
                image_url=store.upload_photo(
                    settings.store.images_bucket, FLIPKART / "images" / row["image"]
                ),
                seller_category=row["category"],
                status=ListingStatus.queued,
            )
            session.add(listing)
            session.flush()
            ids[row["uniq_id"]] = listing.id
    EmbedPipeline(settings, db, backbone, store).run(list(ids.values()))
    assert refit(db, settings, k=2).version_id is not None
    return ids


def count_objects(store: ObjectStore, bucket: str) -> int:
    return sum(1 for _ in store.client.list_objects(bucket, recursive=True))


def suggestions(db: Database, listing_ids: list[int]) -> dict[int, Suggestion]:
    with db.transaction() as session:
        rows = session.execute(select(Suggestion).where(Suggestion.listing_id.in_(listing_ids))).scalars()
        return {row.listing_id: row for row in rows}


def photo(row: dict[str, str]) -> Image.Image:
    return Image.open(FLIPKART / "images" / row["image"]).convert("RGB")


def border_brightness(image: Image.Image) -> float:
    """Mean grey level of the outer 5% ring of the photo."""
    grey = image.convert("L")
    grey.thumbnail((256, 256))
    pixels = np.asarray(grey, dtype=np.float32)
    ring = max(2, int(0.05 * min(pixels.shape)))
    return float(
        np.concatenate(
            [
                pixels[:ring].ravel(),
                pixels[-ring:].ravel(),
                pixels[:, :ring].ravel(),
                pixels[:, -ring:].ravel(),
            ]
        ).mean()
    )


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def expect_rejected(reason: FailureReason, call: Callable[..., object], *args: object) -> ImageRejected:
    """The `ImageRejected` that `call(*args)` raises, checked to carry `reason`."""
    with pytest.raises(ImageRejected) as caught:
        call(*args)
    assert caught.value.reason == reason, caught.value.detail
    return caught.value


def private_host(base: str = "http://127.0.0.1:80", **overrides: object) -> Settings:
    """Settings that allow the private host of `base` (a local test server) on its own port."""
    return load_settings(fetch_private_hosts=base.removeprefix("http://"), **overrides)


def wide_product() -> Image.Image:
    """A wide photo on a light grey background, with red marks at its far left and right ends."""
    image = np.full((100, 300, 3), 230, dtype=np.uint8)
    image[40:60, 10:40] = (255, 0, 0)
    image[40:60, 260:290] = (255, 0, 0)
    return Image.fromarray(image)


COMPOSE = ROOT / "compose.yaml"


def compose() -> dict[str, Any]:
    """compose.yaml as read by a YAML parser."""
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]
