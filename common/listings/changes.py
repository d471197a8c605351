"""A listing changed or removed by its marketplace: `PATCH` (title, seller category) and `DELETE`.

A change is a new revision, as a new photo is: what was made from the old content (suggestion,
overlay, moderator decision, claim) stops counting. Where the photo is embedded already, the
listing is queued only to be scored again from its stored vector (`common.jobs.rescore`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from common.listings.events import CONTROL, NUL, new_revision
from common.photos.urls import parse_s3_url
from common.schema import (
    DEFAULT_SOURCE_ID,
    Embedding,
    Listing,
    ListingStatus,
    ModeratorDecision,
    ReviewLease,
    Suggestion,
)
from common.sources.registry import find_listing


class ListingChanges(BaseModel):
    """The fields sent are changed (null clears one); the fields left out are kept."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    seller_category: str | None = Field(None, max_length=200)
    title: str | None = Field(None, max_length=2000)

    @field_validator("seller_category")
    @classmethod
    def _no_control_characters(cls, value: str | None) -> str | None:
        if value is not None and CONTROL.search(value):
            raise ValueError("must not contain control characters")
        return value or None

    @field_validator("title")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and NUL in value:
            raise ValueError("must not contain NUL characters")
        return value or None


@dataclass(frozen=True)
class Changed:
    listing_id: int
    outcome: Literal["updated", "unchanged"]
    queued: bool  # to be scored again (its photo's vector is kept)


def change_listing(
    session: Session, external_id: str, changes: ListingChanges, source_id: int = DEFAULT_SOURCE_ID
) -> Changed | None:
    """Apply the changes to the source's listing; None when it has no such listing."""
    listing = find_listing(session, external_id, source_id, for_update=True)
    if listing is None:
        return None
    wanted = {name: getattr(changes, name) for name in changes.model_fields_set}
    if all(getattr(listing, name) == value for name, value in wanted.items()):
        return Changed(listing.id, "unchanged", False)
    for name, value in wanted.items():
        setattr(listing, name, value)
    scored = listing.status in (ListingStatus.embedded, ListingStatus.suggested, ListingStatus.reviewed)
    waiting = listing.status == ListingStatus.queued
    photo = listing.image_sha256
    new_revision(session, listing)
    listing.image_sha256 = photo  # the same photo: only the text changed
    if scored and photo is not None:
        # Its vectors now stand for the new revision, which is scored again from them.
        session.execute(
            update(Embedding)
            .where(Embedding.listing_id == listing.id, Embedding.image_sha256 == photo)
            .values(revision=listing.revision)
        )
    elif not waiting:
        return Changed(listing.id, "updated", False)  # failed: its photo's failure stands
    # Sent again: a batch under way with the old revision has its outcome discarded.
    listing.status = ListingStatus.queued
    listing.attempts = 0
    listing.enqueued_at = None
    listing.claimed_at = None
    return Changed(listing.id, "updated", True)


def delete_listing(
    session: Session,
    external_id: str,
    images_bucket: str,
    overlays_bucket: str,
    source_id: int = DEFAULT_SOURCE_ID,
) -> list[tuple[str, str]] | None:
    """Remove the source's listing and everything made from it; the (bucket, key) of its objects
    to delete (overlays, heatmaps, and the photo when it was uploaded to our images bucket). None
    when the source has no such listing."""
    listing = find_listing(session, external_id, source_id, for_update=True)
    if listing is None:
        return None
    objects: list[tuple[str, str]] = []
    suggestion = session.execute(
        select(Suggestion).where(Suggestion.listing_id == listing.id)
    ).scalar_one_or_none()
    if suggestion is not None:
        for key in (
            suggestion.overlay_key,
            suggestion.heatmap_key,
            suggestion.previous_overlay_key,
            suggestion.previous_heatmap_key,
        ):
            if key:
                objects.append((overlays_bucket, key))
    if listing.image_url.startswith("s3://"):
        bucket, key = parse_s3_url(listing.image_url)
        # Uploads are stored by content: another listing may show the same object.
        shared = session.execute(
            select(Listing.id)
            .where(Listing.image_url == listing.image_url, Listing.id != listing.id)
            .limit(1)
        ).first()
        if bucket == images_bucket and shared is None:
            objects.append((bucket, key))
    for table in (ReviewLease, ModeratorDecision, Suggestion, Embedding):
        session.execute(delete(table).where(table.listing_id == listing.id))
    session.execute(delete(Listing).where(Listing.id == listing.id))
    return objects
