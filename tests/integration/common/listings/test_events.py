"""Listing events: validated strictly at the door, committed to Postgres before their message, idempotent."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from pydantic import ValidationError
from sqlalchemy import func, select, update

from common.delivery.queues import EMBED_QUEUE, EXPLAIN_QUEUE, REFIT_QUEUE, REFIT_TASK
from common.delivery.sweep import sweep
from common.listings.events import ListingEvent, ListingRefused, publish_listing, publish_listings, refusal
from common.runtime import Runtime
from common.schema import Listing, ListingStatus
from common.settings import Settings
from vitrine.local.services import free_port

PHOTO = "https://img.example.com/a.jpg"


def _queued_messages(settings: Settings) -> int:
    return int(redis.Redis.from_url(settings.services.broker_url).llen(EMBED_QUEUE))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"external_id": "", "image_url": PHOTO}, "external_id"),
        ({"external_id": "a", "image_url": "file:///etc/passwd"}, "image_url"),
        ({"external_id": "a", "image_url": "s3://bucket-only"}, "image_url"),
        ({"external_id": "a", "image_url": "s3://Not_A_Bucket/key.jpg"}, "image_url"),
        ({"external_id": "a", "image_url": PHOTO, "price": 3}, "price"),
        ({"external_id": "a", "image_url": "https://img.example.com/a.jpg\r\nX-Evil: 1"}, "image_url"),
        ({"external_id": "a", "image_url": "https://img.example.com/a\tb.jpg"}, "image_url"),
        ({"external_id": "a", "image_url": "https://img.example.com/a b.jpg"}, "image_url"),
        ({"external_id": "a", "image_url": "https://user:secret@img.example.com/a.jpg"}, "image_url"),
        ({"external_id": "a", "image_url": "https://img.example.com:99999/a.jpg"}, "image_url"),
        ({"external_id": "a\x00b", "image_url": PHOTO}, "external_id"),
        ({"external_id": "a", "image_url": PHOTO, "title": "a watch\x00"}, "title"),
        ({"external_id": "a", "image_url": PHOTO, "seller_category": "Watch\x00es"}, "seller_category"),
        ({"external_id": "a\nb", "image_url": PHOTO}, "external_id"),
    ],
)
def test_invalid_events_are_refused_naming_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ListingEvent(**fields)  # type: ignore[arg-type]
    assert [error["loc"][0] for error in caught.value.errors()] == [field]


def test_a_title_keeps_its_line_breaks() -> None:
    event = ListingEvent(external_id="a", image_url=PHOTO, title="Steel watch\nwith box")
    assert event.title == "Steel watch\nwith box"


def test_photos_only_from_our_images_buckets(settings: Settings, runtime: Runtime, clean_db: None) -> None:
    ours = ListingEvent(external_id="ours", image_url=f"s3://{settings.store.images_bucket}/photos/a.jpg")
    other = ListingEvent(external_id="other", image_url="s3://other-bucket/private.jpg")
    assert refusal(ours, settings) is None
    refused = refusal(other, settings)
    assert refused is not None and refused.field == "image_url" and "other-bucket" in refused.message
    # One refused event refuses the call before anything is written or sent.
    with pytest.raises(ListingRefused, match="other-bucket"):
        publish_listings(runtime, [ours, other])
    with runtime.db.transaction() as session:
        assert session.execute(select(func.count()).select_from(Listing)).scalar_one() == 0
    assert _queued_messages(settings) == 0
    allowed = settings.replace(fetch_allowed_buckets=["other-bucket"])
    assert refusal(other, allowed) is None


def test_publish_commits_the_row_then_sends_one_message_then_marks_it_sent(
    settings: Settings, runtime: Runtime, clean_db: None
) -> None:
    result = publish_listing(runtime, "sku-1", PHOTO, "Watches", "A watch")
    assert result.outcome == "created"
    with runtime.db.transaction() as session:
        listing = session.get(Listing, result.listing_id)
        assert listing is not None
        assert (listing.status, listing.seller_category, listing.attempts) == ("queued", "Watches", 0)
        assert listing.enqueued_at is not None
    assert _queued_messages(settings) == 1


def test_listings_sent_while_the_broker_is_down_are_recorded_and_sent_by_the_sweep(
    settings: Settings, runtime: Runtime, clean_db: None
) -> None:
    sweep(runtime.db, runtime.publisher, settings)  # the broker mark exists from here on
    down = Runtime(settings.replace(broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        results = publish_listings(
            down, [ListingEvent(external_id=f"sku-{i}", image_url=f"{PHOTO}?{i}") for i in range(3)]
        )
    finally:
        down.close()
    assert [r.outcome for r in results] == ["created"] * 3
    ids = [r.listing_id for r in results]
    with runtime.db.transaction() as session:
        rows = session.execute(select(Listing).where(Listing.id.in_(ids))).scalars().all()
        assert {(row.status, row.enqueued_at) for row in rows} == {("queued", None)}
        # As if the requeue delay had passed.
        session.execute(
            update(Listing).where(Listing.id.in_(ids)).values(updated_at=func.now() - timedelta(hours=1))
        )
    assert _queued_messages(settings) == 0
    assert sweep(runtime.db, runtime.publisher, settings).listings == 3
    assert _queued_messages(settings) == 3


def test_republishing_the_same_listing_and_image_is_a_no_op(
    settings: Settings, runtime: Runtime, clean_db: None
) -> None:
    first = publish_listing(runtime, "sku-2", "https://img.example.com/b.jpg")
    again = publish_listing(runtime, "sku-2", "https://img.example.com/b.jpg")
    assert again.outcome == "unchanged" and again.listing_id == first.listing_id
    assert _queued_messages(settings) == 1
    with runtime.db.transaction() as session:
        assert session.execute(select(func.count()).select_from(Listing)).scalar_one() == 1


def test_a_new_image_or_a_failed_listing_is_queued_again(
    settings: Settings, runtime: Runtime, clean_db: None
) -> None:
    first = publish_listing(runtime, "sku-3", "https://img.example.com/c.jpg")
    with runtime.db.transaction() as session:
        session.execute(
            update(Listing)
            .where(Listing.id == first.listing_id)
            .values(status=ListingStatus.failed, failure_reason="fetch_timeout", attempts=1)
        )
    assert publish_listing(runtime, "sku-3", "https://img.example.com/c.jpg").outcome == "requeued"
    assert publish_listing(runtime, "sku-3", "https://img.example.com/d.jpg").outcome == "requeued"
    with runtime.db.transaction() as session:
        listing = session.get(Listing, first.listing_id)
        assert listing is not None
        assert (listing.status, listing.failure_reason, listing.attempts) == ("queued", None, 0)
        assert listing.image_url.endswith("d.jpg")
    assert _queued_messages(settings) == 3


def test_each_queue_gets_only_its_own_messages(settings: Settings, runtime: Runtime, clean_db: None) -> None:
    app = runtime.publisher.app
    client = redis.Redis.from_url(settings.services.broker_url)
    # Declare every queue with its binding, as workers do when they start.
    with app.connection_for_write() as connection:
        for queue in app.amqp.queues.values():
            queue(connection.default_channel).declare()
    publish_listing(runtime, "sku-routing", "https://img.example.com/r.jpg")
    runtime.publisher.explain([1, 2])
    app.send_task(REFIT_TASK)
    depths = {queue: int(client.llen(queue)) for queue in (EMBED_QUEUE, EXPLAIN_QUEUE, REFIT_QUEUE)}
    assert depths == {EMBED_QUEUE: 1, EXPLAIN_QUEUE: 2, REFIT_QUEUE: 1}
