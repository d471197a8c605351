"""A message lost between the broker and a worker is found and sent again; one the broker still
holds, waiting or delivered and unacknowledged, is never sent twice."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import redis
from sqlalchemy import func, update

from common.delivery.publisher import KOMBU_UNACKED_KEY
from common.delivery.queues import EMBED_QUEUE
from common.delivery.sweep import reconciled_total, sweep
from common.listings.events import publish_listing
from common.runtime import Runtime
from common.schema import Listing, ListingStatus
from common.settings import Settings


def _sent_long_ago(runtime: Runtime, listing_ids: list[int]) -> None:
    with runtime.db.transaction() as session:
        session.execute(
            update(Listing)
            .where(Listing.id.in_(listing_ids))
            .values(enqueued_at=func.now() - timedelta(hours=1), updated_at=func.now() - timedelta(hours=1))
        )


def _ids_in(messages: list[bytes]) -> list[int]:
    """The listing id of each embed message (its first argument, in the base64 JSON body)."""
    return [json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0] for raw in messages]


def test_a_message_lost_in_flight_is_sent_again_and_counted(
    settings: Settings, runtime: Runtime, clean_db: None
) -> None:
    broker = redis.Redis.from_url(settings.services.broker_url)
    sweep(runtime.db, runtime.publisher, settings)  # the broker mark exists from here on
    waiting = publish_listing(runtime, "sku-waiting", "https://img.example.com/w.jpg").listing_id
    delivered = publish_listing(runtime, "sku-delivered", "https://img.example.com/d.jpg").listing_id
    lost = publish_listing(runtime, "sku-lost", "https://img.example.com/l.jpg").listing_id
    fresh = publish_listing(runtime, "sku-fresh", "https://img.example.com/f.jpg").listing_id
    messages = {
        listing: raw
        for raw, listing in zip(
            broker.lrange(EMBED_QUEUE, 0, -1), _ids_in(broker.lrange(EMBED_QUEUE, 0, -1)), strict=True
        )
    }
    # `delivered`: a worker holds it unacknowledged (as kombu records it); `lost` and `fresh`:
    # popped by a worker that died before recording it; only `fresh` was sent a moment ago.
    broker.delete(EMBED_QUEUE)
    broker.rpush(EMBED_QUEUE, messages[waiting])
    broker.hset(KOMBU_UNACKED_KEY, "tag-1", json.dumps([json.loads(messages[delivered]), "embed", "embed"]))
    _sent_long_ago(runtime, [waiting, delivered, lost])

    result = sweep(runtime.db, runtime.publisher, settings)

    assert result.reconciled == 1 and result.listings == 0
    assert sorted(_ids_in(broker.lrange(EMBED_QUEUE, 0, -1))) == sorted([waiting, lost])
    with runtime.db.transaction() as session:
        assert reconciled_total(session) == 1
    # Sent again now, it is young again: the next sweep leaves it alone.
    assert sweep(runtime.db, runtime.publisher, settings).reconciled == 0
    assert fresh not in _ids_in(broker.lrange(EMBED_QUEUE, 0, -1))


class FinishingPublisher:
    """The real publisher; a worker finishes the listing (commits, then acknowledges) just as
    the sweep reads the broker, after it read Postgres."""

    def __init__(self, runtime: Runtime, listing_id: int) -> None:
        self.runtime, self.listing_id = runtime, listing_id

    def __getattr__(self, name: str) -> object:
        return getattr(self.runtime.publisher, name)

    def listings_held(self, queue: str, task: str, limit: int) -> set[int] | None:
        held = self.runtime.publisher.listings_held(queue, task, limit)
        with self.runtime.db.transaction() as session:
            session.execute(
                update(Listing).where(Listing.id == self.listing_id).values(status=ListingStatus.suggested)
            )
        return held


def test_a_listing_finished_while_the_broker_is_read_is_not_taken_for_lost(
    settings: Settings, runtime: Runtime, clean_db: None
) -> None:
    broker = redis.Redis.from_url(settings.services.broker_url)
    sweep(runtime.db, runtime.publisher, settings)
    listing = publish_listing(runtime, "sku-done", "https://img.example.com/d.jpg").listing_id
    broker.delete(EMBED_QUEUE)  # its worker took it and acknowledged it
    _sent_long_ago(runtime, [listing])

    result = sweep(runtime.db, FinishingPublisher(runtime, listing), settings)  # type: ignore[arg-type]

    assert result.reconciled == 0
    assert broker.llen(EMBED_QUEUE) == 0
    with runtime.db.transaction() as session:
        assert reconciled_total(session) == 0
