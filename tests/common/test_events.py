"""Listing events: validated, committed to Postgres before their message, idempotent, swept."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import redis
from pydantic import ValidationError
from sqlalchemy import func, select, update

from common.config import Settings
from common.events import (
    ListingEvent,
    publish_listing,
    sweep_missing_explanations,
    sweep_stale_listings,
)
from common.models import ClusteringVersion, Listing, ListingStatus, Suggestion
from common.queues import EMBED_QUEUE, EXPLAIN_QUEUE, REFIT_QUEUE, REFIT_TASK
from common.runtime import Runtime


def _queued_messages(settings: Settings) -> int:
    return int(redis.Redis.from_url(settings.broker_url).llen(EMBED_QUEUE))


@pytest.mark.parametrize(
    "fields",
    [
        {"listing_id": "", "image_url": "https://img.example.com/a.jpg"},
        {"listing_id": "a", "image_url": "file:///etc/passwd"},
        {"listing_id": "a", "image_url": "s3://bucket-only"},
        {"listing_id": "a", "image_url": "https://img.example.com/a.jpg", "price": 3},
    ],
)
def test_invalid_events_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ListingEvent(**fields)  # type: ignore[arg-type]


def test_publish_commits_the_row_then_sends_one_message(
    settings: Settings, runtime: Runtime, clean_db: None
) -> None:
    result = publish_listing(
        runtime.db, runtime.publisher, "sku-1", "https://img.example.com/a.jpg", "Watches", "A watch"
    )
    assert result.outcome == "created"
    with runtime.db.transaction() as session:
        listing = session.get(Listing, result.listing_id)
        assert listing is not None
        assert (listing.status, listing.seller_category, listing.attempts) == ("queued", "Watches", 0)
    assert _queued_messages(settings) == 1


def test_republishing_the_same_listing_and_image_is_a_no_op(
    settings: Settings, runtime: Runtime, clean_db: None
) -> None:
    first = publish_listing(runtime.db, runtime.publisher, "sku-2", "https://img.example.com/b.jpg")
    again = publish_listing(runtime.db, runtime.publisher, "sku-2", "https://img.example.com/b.jpg")
    assert again.outcome == "unchanged" and again.listing_id == first.listing_id
    assert _queued_messages(settings) == 1
    with runtime.db.transaction() as session:
        assert session.execute(select(func.count()).select_from(Listing)).scalar_one() == 1


def test_a_new_image_or_a_failed_listing_is_queued_again(
    settings: Settings, runtime: Runtime, clean_db: None
) -> None:
    first = publish_listing(runtime.db, runtime.publisher, "sku-3", "https://img.example.com/c.jpg")
    with runtime.db.transaction() as session:
        session.execute(
            update(Listing)
            .where(Listing.id == first.listing_id)
            .values(status=ListingStatus.failed, failure_reason="fetch_timeout", attempts=1)
        )
    assert (
        publish_listing(runtime.db, runtime.publisher, "sku-3", "https://img.example.com/c.jpg").outcome
        == "requeued"
    )
    assert (
        publish_listing(runtime.db, runtime.publisher, "sku-3", "https://img.example.com/d.jpg").outcome
        == "requeued"
    )
    with runtime.db.transaction() as session:
        listing = session.get(Listing, first.listing_id)
        assert listing is not None
        assert (listing.status, listing.failure_reason, listing.attempts) == ("queued", None, 0)
        assert listing.image_url.endswith("d.jpg")
    assert _queued_messages(settings) == 3


def test_sweep_resends_only_listings_queued_too_long(
    settings: Settings, runtime: Runtime, clean_db: None
) -> None:
    old = publish_listing(runtime.db, runtime.publisher, "sku-old", "https://img.example.com/old.jpg")
    publish_listing(runtime.db, runtime.publisher, "sku-new", "https://img.example.com/new.jpg")
    done = publish_listing(runtime.db, runtime.publisher, "sku-done", "https://img.example.com/done.jpg")
    redis.Redis.from_url(settings.broker_url).delete(EMBED_QUEUE)  # Redis restarted: messages lost
    with runtime.db.transaction() as session:
        session.execute(
            update(Listing)
            .where(Listing.id.in_([old.listing_id, done.listing_id]))
            .values(enqueued_at=func.now() - timedelta(hours=1))
        )
        session.execute(
            update(Listing).where(Listing.id == done.listing_id).values(status=ListingStatus.suggested)
        )
    assert sweep_stale_listings(runtime.db, runtime.publisher, timedelta(minutes=10)) == [old.listing_id]
    assert _queued_messages(settings) == 1
    # Just re-sent: not old any more.
    assert sweep_stale_listings(runtime.db, runtime.publisher, timedelta(minutes=10)) == []


def test_each_queue_gets_only_its_own_messages(settings: Settings, runtime: Runtime, clean_db: None) -> None:
    app = runtime.publisher.app
    client = redis.Redis.from_url(settings.broker_url)
    # Declare every queue with its binding, as workers do when they start.
    with app.connection_for_write() as connection:
        for queue in app.amqp.queues.values():
            queue(connection.default_channel).declare()
    publish_listing(runtime.db, runtime.publisher, "sku-routing", "https://img.example.com/r.jpg")
    runtime.publisher.explain([1, 2])
    app.send_task(REFIT_TASK)
    depths = {queue: int(client.llen(queue)) for queue in (EMBED_QUEUE, EXPLAIN_QUEUE, REFIT_QUEUE)}
    assert depths == {EMBED_QUEUE: 1, EXPLAIN_QUEUE: 2, REFIT_QUEUE: 1}


def test_sweep_asks_again_for_overlays_that_never_came(
    settings: Settings, runtime: Runtime, clean_db: None
) -> None:
    listings = [
        publish_listing(runtime.db, runtime.publisher, f"sku-x{i}", f"https://img.example.com/x{i}.jpg")
        for i in range(4)
    ]
    with runtime.db.transaction() as session:
        version = ClusteringVersion(
            backbone_id="m@1", k=1, dim=2, centroids=np.ones(2, dtype=np.float32), cluster_categories=[],
            sizes=[4], n_vectors=4, n_labelled=0, fit_seconds=0.1, algorithm="kmeans", is_current=True,
        )  # fmt: skip
        session.add(version)
        session.flush()
        for i, published in enumerate(listings):
            session.add(
                Suggestion(
                    listing_id=published.listing_id, clustering_version_id=version.id, backbone_id="m@1",
                    cluster=0, category="Watches", confidence=0.3, alternatives=[], method="knn",
                    needs_review=i != 3,  # the last one is confident: no overlay needed
                    gradcam_key="done.png" if i == 1 else None,
                    explain_error="corrupt_image" if i == 2 else None,
                    updated_at=func.now() - timedelta(hours=1),
                )
            )  # fmt: skip
        session.execute(update(Listing).values(status=ListingStatus.suggested))
    assert sweep_missing_explanations(runtime.db, runtime.publisher, timedelta(minutes=10)) == [
        listings[0].listing_id
    ]
    assert redis.Redis.from_url(settings.broker_url).llen(EXPLAIN_QUEUE) == 1
