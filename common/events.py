"""Listing events from the marketplace: validate, record in Postgres, then send to the embed queue."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.db import Database
from common.messages import Publisher
from common.models import Listing, ListingStatus, Suggestion


class ListingEvent(BaseModel):
    """What a marketplace sends when a seller lists an item."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    listing_id: str = Field(min_length=1, max_length=200)
    image_url: str = Field(min_length=8, max_length=4096)
    seller_category: str | None = Field(None, max_length=200)
    title: str | None = Field(None, max_length=2000)

    @field_validator("image_url")
    @classmethod
    def _supported_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.hostname:
            return value
        if parts.scheme == "s3" and parts.netloc and parts.path.strip("/"):
            return value
        raise ValueError("must be an http(s):// URL or s3://bucket/key")

    @field_validator("seller_category", "title")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None


Outcome = Literal["created", "requeued", "unchanged"]


@dataclass(frozen=True)
class Published:
    listing_id: int
    external_id: str
    outcome: Outcome


def record_listing(session: Session, event: ListingEvent) -> Published:
    """Upsert the listing row. Same listing and image again: nothing changes.

    A new image for a known listing, or the same image after a failure, queues it again.
    """
    now = datetime.now(UTC)
    inserted = session.execute(
        insert(Listing)
        .values(
            external_id=event.listing_id,
            image_url=event.image_url,
            seller_category=event.seller_category,
            title=event.title,
            status=ListingStatus.queued,
            attempts=0,
            enqueued_at=now,
        )
        .on_conflict_do_nothing(index_elements=["external_id"])
        .returning(Listing.id)
    ).scalar_one_or_none()
    if inserted is not None:
        return Published(inserted, event.listing_id, "created")

    listing = session.execute(
        select(Listing).where(Listing.external_id == event.listing_id).with_for_update()
    ).scalar_one()
    same_image = listing.image_url == event.image_url
    if same_image and listing.status != ListingStatus.failed:
        return Published(listing.id, event.listing_id, "unchanged")
    listing.image_url = event.image_url
    listing.seller_category = event.seller_category or listing.seller_category
    listing.title = event.title or listing.title
    listing.status = ListingStatus.queued
    listing.failure_reason = None
    listing.failure_detail = None
    listing.attempts = 0
    listing.enqueued_at = now
    if not same_image:
        listing.image_sha256 = None
    return Published(listing.id, event.listing_id, "requeued")


def publish_listings(db: Database, publisher: Publisher, events: Iterable[ListingEvent]) -> list[Published]:
    """Commit the rows first, then send one message per listing that needs work."""
    events = list(events)
    with db.transaction() as session:
        results = [record_listing(session, event) for event in events]
    # Only after the commit: a worker must always find the row its message names.
    publisher.embed(r.listing_id for r in results if r.outcome != "unchanged")
    return results


def publish_listing(
    db: Database,
    publisher: Publisher,
    listing_id: str,
    image_url: str,
    seller_category: str | None = None,
    title: str | None = None,
) -> Published:
    """Publish one listing event; safe to call again with the same arguments."""
    event = ListingEvent(
        listing_id=listing_id, image_url=image_url, seller_category=seller_category, title=title
    )
    return publish_listings(db, publisher, [event])[0]


def sweep_stale_listings(db: Database, publisher: Publisher, older_than: timedelta) -> list[int]:
    """Re-send listings still `queued` after `older_than` (Redis may have lost their message)."""
    cutoff = datetime.now(UTC) - older_than
    with db.transaction() as session:
        ids = list(
            session.execute(
                update(Listing)
                .where(Listing.status == ListingStatus.queued, Listing.enqueued_at < cutoff)
                .values(enqueued_at=datetime.now(UTC))
                .returning(Listing.id)
            ).scalars()
        )
    publisher.embed(ids)
    return ids


def sweep_missing_explanations(db: Database, publisher: Publisher, older_than: timedelta) -> list[int]:
    """Ask again for overlays of flagged suggestions that still have none (a lost message)."""
    cutoff = datetime.now(UTC) - older_than
    with db.transaction() as session:
        ids = list(
            session.execute(
                select(Suggestion.listing_id)
                .join(Listing, Listing.id == Suggestion.listing_id)
                .where(
                    Suggestion.needs_review,
                    Suggestion.gradcam_key.is_(None),
                    Suggestion.explain_error.is_(None),
                    Suggestion.updated_at < cutoff,
                    Listing.status == ListingStatus.suggested,
                )
            ).scalars()
        )
    publisher.explain(ids)
    return ids
