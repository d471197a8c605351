"""Listing events from the marketplace: validate, record in Postgres, then send to the embed queue."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.delivery.outbox import send_listings
from common.delivery.publisher import BROKER_ERRORS
from common.photos.failures import ImageRejected
from common.photos.urls import check_object_allowed, parse_s3_url
from common.runtime import Runtime
from common.schema import DEFAULT_SOURCE_ID, Listing, ListingStatus, ReviewLease, Suggestion
from common.settings import Settings

log = logging.getLogger(__name__)

# C0 controls, space and DEL: never part of a URL we fetch (a CR/LF could split a request).
URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")
# Identifiers and categories are shown and compared: no control characters at all.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Postgres text cannot hold NUL; the rest of a title's whitespace is the seller's business.
NUL = "\x00"
# S3 bucket names as the S3 API defines them.
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MAX_S3_KEY_BYTES = 1024


class ListingEvent(BaseModel):
    """What a marketplace sends when a seller lists an item."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    # The marketplace's own id of the listing, unique per marketplace.
    external_id: str = Field(min_length=1, max_length=200)
    image_url: str = Field(min_length=8, max_length=4096)
    seller_category: str | None = Field(None, max_length=200)
    title: str | None = Field(None, max_length=2000)

    @field_validator("external_id", "seller_category")
    @classmethod
    def _no_control_characters(cls, value: str | None) -> str | None:
        if value is not None and CONTROL.search(value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("title")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and NUL in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("image_url")
    @classmethod
    def _supported_url(cls, value: str) -> str:
        if URL_FORBIDDEN.search(value):
            raise ValueError("must not contain spaces or control characters (CR, LF, tab, NUL, ...)")
        parts = urlsplit(value)
        if parts.scheme in ("http", "https"):
            if not parts.hostname:
                raise ValueError("an http(s) URL needs a host")
            if parts.username is not None or parts.password is not None:
                raise ValueError("must not carry credentials")
            try:
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError:
                raise ValueError("has an invalid port") from None
            return value
        if parts.scheme == "s3":
            bucket, _, key = value[len("s3://") :].partition("/")
            if not BUCKET_NAME.match(bucket):
                raise ValueError(f"s3 bucket {bucket!r} is not a valid bucket name")
            if not key or len(key.encode()) > MAX_S3_KEY_BYTES:
                raise ValueError(f"s3 object key must be 1 to {MAX_S3_KEY_BYTES} bytes")
            return value
        raise ValueError("must be an http(s):// URL or s3://bucket/key")

    @field_validator("seller_category", "title")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None


class ListingRefused(ValueError):
    """An event that is valid on its own but not acceptable here (e.g. a bucket not ours)."""

    def __init__(self, external_id: str, field: str, message: str) -> None:
        super().__init__(f"listing {external_id!r}: {field}: {message}")
        self.external_id = external_id
        self.field = field
        self.message = message


def refusal(event: ListingEvent, settings: Settings) -> ListingRefused | None:
    """Why this deployment cannot accept the event, or None: s3:// photos only from our images
    buckets, and in ours only under the publishers' prefix."""
    if event.image_url.startswith("s3://"):
        try:
            check_object_allowed(*parse_s3_url(event.image_url), settings)
        except ImageRejected as rejected:
            return ListingRefused(event.external_id, "image_url", rejected.detail)
    return None


Outcome = Literal["created", "requeued", "unchanged"]


@dataclass(frozen=True)
class Published:
    listing_id: int
    external_id: str
    outcome: Outcome


def record_listing(session: Session, event: ListingEvent, source_id: int = DEFAULT_SOURCE_ID) -> Published:
    """Upsert the listing row of `source_id`. Same listing and image again: nothing changes.

    A new image for a known listing, or the same image after a failure, queues it again. The
    row's `enqueued_at` stays NULL until its message is known to be sent.
    """
    inserted = session.execute(
        insert(Listing)
        .values(
            source_id=source_id,
            external_id=event.external_id,
            image_url=event.image_url,
            seller_category=event.seller_category,
            title=event.title,
            status=ListingStatus.queued,
            attempts=0,
            enqueued_at=None,
        )
        .on_conflict_do_nothing(index_elements=["source_id", "external_id"])
        .returning(Listing.id)
    ).scalar_one_or_none()
    if inserted is not None:
        return Published(inserted, event.external_id, "created")

    listing = session.execute(
        select(Listing)
        .where(Listing.source_id == source_id, Listing.external_id == event.external_id)
        .with_for_update()
    ).scalar_one()
    same_image = listing.image_url == event.image_url
    if same_image and listing.status != ListingStatus.failed:
        return Published(listing.id, event.external_id, "unchanged")
    listing.image_url = event.image_url
    listing.seller_category = event.seller_category or listing.seller_category
    listing.title = event.title or listing.title
    listing.status = ListingStatus.queued
    listing.failure_reason = None
    listing.failure_detail = None
    listing.last_error = None
    listing.attempts = 0
    listing.enqueued_at = None
    listing.claimed_at = None
    if not same_image:
        new_revision(session, listing)
    return Published(listing.id, event.external_id, "requeued")


def new_revision(session: Session, listing: Listing) -> None:
    """A new photo: a new revision, and nothing made from the old photo counts any more.

    Writes still under way for the old revision are discarded when they land (they compare
    revisions under the listing's lock). The old suggestion stays for the record but waits for
    no one, its overlays (current and previous) are forgotten, and the claim on it runs out:
    the new photo is scored and, if it needs one, reviewed on its own. A moderator decision of
    the old revision no longer labels the listing (`common.moderation.labels`).
    """
    listing.revision += 1
    listing.image_sha256 = None
    session.execute(
        update(Suggestion)
        .where(Suggestion.listing_id == listing.id)
        .values(
            needs_review=False,
            overlay_key=None,
            heatmap_key=None,
            explain_target=None,
            explain_requested_at=None,
            previous_overlay_key=None,
            previous_heatmap_key=None,
            previous_explain_target=None,
        )
    )
    # Run out, not removed: its moderator's decision is then refused as being of the old photo.
    session.execute(
        update(ReviewLease).where(ReviewLease.listing_id == listing.id).values(expires_at=func.now())
    )


def record_listings(
    session: Session, events: list[ListingEvent], source_id: int = DEFAULT_SOURCE_ID
) -> list[Published]:
    """`record_listing` for many events, in their order: new listings by one INSERT statement.

    Only the events whose listing exists already (or repeats within the list) take the row-by-row
    path, which decides between `unchanged` and `requeued`.
    """
    rows = [
        {
            "source_id": source_id,
            "external_id": e.external_id,
            "image_url": e.image_url,
            "seller_category": e.seller_category,
            "title": e.title,
            "status": ListingStatus.queued,
            "attempts": 0,
            "enqueued_at": None,
        }
        for e in events
    ]
    # One cached statement, executed for many rows: SQLAlchemy sends them as multi-row INSERTs
    # ("insertmanyvalues"), so a list of 500 costs a round trip or two, not 500.
    inserted = session.execute(
        insert(Listing)
        .on_conflict_do_nothing(index_elements=["source_id", "external_id"])
        .returning(Listing.id, Listing.external_id),
        rows,
    )
    created: dict[str, int] = {external_id: listing_id for listing_id, external_id in inserted}
    results = []
    for event in events:
        listing_id = created.pop(event.external_id, None)
        if listing_id is not None:
            results.append(Published(listing_id, event.external_id, "created"))
        else:
            results.append(record_listing(session, event, source_id))
    return results


def publish_listings(
    runtime: Runtime, events: Iterable[ListingEvent], source_id: int = DEFAULT_SOURCE_ID
) -> list[Published]:
    """Commit the rows (of `source_id`) first, then send one message per listing that needs work.

    Raises `ListingRefused` (writing nothing) when any event is not acceptable here; callers
    that want per-event answers check `refusal()` first.
    """
    events = list(events)
    for event in events:
        refused = refusal(event, runtime.settings)
        if refused is not None:
            raise refused
    with runtime.db.transaction() as session:
        results = record_listings(session, events, source_id)
    # Only after the commit: a worker must always find the row its message names. Should this
    # process die before the send, or the broker be away, the sweep sends what stayed unsent.
    waiting = [r.listing_id for r in results if r.outcome != "unchanged"]
    try:
        send_listings(runtime.db, runtime.publisher, waiting)
    except BROKER_ERRORS as error:
        # Recorded is accepted: the rows stay unmarked, and the sweep sends them once it can.
        log.warning(
            "broker unreachable (%s): %d listings wait in Postgres for the sweep", error, len(waiting)
        )
    return results


def publish_listing(
    runtime: Runtime,
    external_id: str,
    image_url: str,
    seller_category: str | None = None,
    title: str | None = None,
    source_id: int = DEFAULT_SOURCE_ID,
) -> Published:
    """Publish one listing event; safe to call again with the same arguments."""
    event = ListingEvent(
        external_id=external_id, image_url=image_url, seller_category=seller_category, title=title
    )
    return publish_listings(runtime, [event], source_id)[0]
