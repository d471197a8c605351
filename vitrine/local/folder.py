"""A folder of product photos as listing events: upload each photo, publish one listing per photo."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.listings.events import ListingEvent, publish_listings
from common.runtime import Runtime
from common.schema import DEFAULT_SOURCE_ID
from common.suggestions.sampling import stable_fraction

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
PUBLISH_CHUNK = 50


class FolderError(ValueError):
    """The folder or its label file cannot be used as given; the message says why."""


def read_labels(path: Path, column: str) -> dict[str, str]:
    """image file name → category, from a CSV with an `image` column and COLUMN."""
    if not path.is_file():
        raise FolderError(f"no such label file: {path}")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        if "image" not in fields or column not in fields:
            raise FolderError(f"{path} needs columns 'image' and {column!r}; it has {fields}")
        return {row["image"]: row[column] for row in reader if row[column]}


def list_images(directory: Path, limit: int | None = None) -> list[Path]:
    if not directory.is_dir():
        raise FolderError(f"not a directory: {directory}")
    images = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return images[:limit] if limit else images


def gives_seller_category(name: str, share: float) -> bool:
    """A stable choice of which listings carry the seller's category (the rest are held back)."""
    return stable_fraction(name) < share


@dataclass(frozen=True)
class PublishedPhoto:
    external_id: str
    category: str | None  # from the labels file, published or held back
    given_to_seller: bool


def publish_folder(
    runtime: Runtime,
    images: Path,
    labels: Path | None,
    *,
    label_column: str = "category",
    title_column: str | None = None,
    limit: int | None = None,
    seller_share: float = 0.5,
    advance: Callable[[int], None] | None = None,
    source_id: int = DEFAULT_SOURCE_ID,
) -> tuple[list[PublishedPhoto], dict[str, int]]:
    """Upload a folder's photos and publish one listing per photo (listing id = file stem), as
    listings of `source_id`."""
    settings = runtime.settings
    paths = list_images(images, limit)
    categories = read_labels(labels, label_column) if labels else {}
    titles = read_labels(labels, title_column) if labels and title_column else {}
    runtime.store.ensure_bucket(settings.store.images_bucket)
    outcomes: dict[str, int] = {}
    published: list[PublishedPhoto] = []
    for start in range(0, len(paths), PUBLISH_CHUNK):
        events = []
        for path in paths[start : start + PUBLISH_CHUNK]:
            category = categories.get(path.name)
            given = category is not None and gives_seller_category(path.name, seller_share)
            events.append(
                ListingEvent(
                    external_id=path.stem,
                    image_url=runtime.store.upload_photo(
                        settings.store.images_bucket, path, settings.store.images_prefix
                    ),
                    seller_category=category if given else None,
                    title=titles.get(path.name),
                )
            )
            published.append(PublishedPhoto(path.stem, category, given))
        for result in publish_listings(runtime, events, source_id):
            outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
        if advance is not None:
            advance(len(events))
    return published, outcomes
