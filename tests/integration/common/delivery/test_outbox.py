"""Postgres keeps the account of what was sent: the sweep sends what was not, and everything after
the broker lost its lists, but never what merely waits in a queue or a worker's prefetch."""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path

import numpy as np
import redis
from sqlalchemy import func, select, update

from common.delivery.outbox import request_explanations
from common.delivery.queues import EMBED_QUEUE, EXPLAIN_QUEUE
from common.delivery.sweep import SweepResult, sweep
from common.listings.events import publish_listing
from common.runtime import Runtime
from common.schema import ClusteringVersion, Listing, ListingStatus, Suggestion
from common.settings import Settings
from tests.faults.stack import Server
from vitrine.local.services import free_port, redis_argv


def _depth(settings: Settings, queue: str) -> int:
    return int(redis.Redis.from_url(settings.services.broker_url).llen(queue))


def _age(runtime: Runtime, listing_ids: list[int], **values: object) -> None:
    with runtime.db.transaction() as session:
        session.execute(
            update(Listing)
            .where(Listing.id.in_(listing_ids))
            .values(updated_at=func.now() - timedelta(hours=1), **values)
        )


def test_sweep_sends_only_what_was_never_sent(settings: Settings, runtime: Runtime, clean_db: None) -> None:
    sweep(runtime.db, runtime.publisher, settings)  # the broker mark exists from here on
    sent = publish_listing(runtime, "sku-sent", "https://img.example.com/sent.jpg")
    lost = publish_listing(runtime, "sku-lost", "https://img.example.com/lost.jpg")
    fresh = publish_listing(runtime, "sku-fresh", "https://img.example.com/fresh.jpg")
    # `lost`: its publisher died between commit and send; `fresh` too, but only a moment ago.
    _age(runtime, [sent.listing_id])
    _age(runtime, [lost.listing_id], enqueued_at=None)
    with runtime.db.transaction() as session:
        session.execute(update(Listing).where(Listing.id == fresh.listing_id).values(enqueued_at=None))
    before = _depth(settings, EMBED_QUEUE)

    result = sweep(runtime.db, runtime.publisher, settings)

    assert (result.broker_reset, result.listings) == (False, 1)
    assert _depth(settings, EMBED_QUEUE) == before + 1
    # Sent now: the next sweep leaves it alone, and never touches `sent`, however old.
    assert sweep(runtime.db, runtime.publisher, settings).listings == 0


def test_after_redis_restarted_empty_everything_waiting_is_sent_once(
    settings: Settings, clean_db: None, tmp_path: Path
) -> None:
    # A Redis of its own, to restart: it keeps nothing on disk, like the deployment's.
    port = free_port()
    redis_server = Server(
        "redis",
        redis_argv(port, tmp_path),
        port,
        tmp_path / "redis.log",
    )
    redis_server.start()
    runtime = Runtime(settings.replace(broker_url=f"redis://127.0.0.1:{port}/0"))
    try:
        ids = [
            publish_listing(runtime, f"sku-{i}", f"https://img.example.com/{i}.jpg").listing_id
            for i in range(3)
        ]
        with runtime.db.transaction() as session:
            session.execute(
                update(Listing).where(Listing.id == ids[2]).values(status=ListingStatus.suggested)
            )
        # Seen once: the broker is known, nothing is re-sent (the messages are in the queue).
        assert sweep(runtime.db, runtime.publisher, runtime.settings) == SweepResult(False, 0, 0)
        # Data lost without a restart (an operator's FLUSHALL) is not taken for one.
        runtime.publisher.redis.flushdb()
        assert not sweep(runtime.db, runtime.publisher, runtime.settings).broker_reset

        redis_server.stop(signal.SIGKILL)
        redis_server.start()
        result = sweep(runtime.db, runtime.publisher, runtime.settings)

        assert result == SweepResult(True, 2, 0)
        assert runtime.publisher.queue_depth(EMBED_QUEUE) == 2
        assert sweep(runtime.db, runtime.publisher, runtime.settings) == SweepResult(False, 0, 0)
    finally:
        runtime.close()
        redis_server.stop()


def _flagged(runtime: Runtime, n: int) -> list[int]:
    ids = [
        publish_listing(runtime, f"sku-x{i}", f"https://img.example.com/x{i}.jpg").listing_id
        for i in range(n)
    ]
    with runtime.db.transaction() as session:
        version = ClusteringVersion(
            backbone_id="m@1", k=1, dim=2, centroids=np.ones(2, dtype=np.float32), cluster_categories=[],
            sizes=[n], n_vectors=n, n_labelled=0, fit_seconds=0.1, algorithm="kmeans", is_current=True,
        )  # fmt: skip
        session.add(version)
        session.flush()
        for listing_id in ids:
            session.add(
                Suggestion(
                    listing_id=listing_id, clustering_version_id=version.id, backbone_id="m@1", cluster=0,
                    category="Watches", confidence=0.3, alternatives=[], method="knn", needs_review=True,
                )
            )  # fmt: skip
        session.execute(update(Listing).where(Listing.id.in_(ids)).values(status=ListingStatus.suggested))
    return ids


def test_overlay_requests_wait_in_postgres_when_the_explain_queue_is_full(
    settings: Settings, runtime: Runtime, clean_db: None
) -> None:
    ids = _flagged(runtime, 5)
    limited = settings.replace(explain_queue_limit=3)

    asked = request_explanations(runtime.db, runtime.publisher, ids, limited)

    assert asked == ids[:3] and _depth(settings, EXPLAIN_QUEUE) == 3
    with runtime.db.transaction() as session:
        requested = dict(
            session.execute(select(Suggestion.listing_id, Suggestion.explain_requested_at)).tuples().all()
        )
    assert [requested[i] is not None for i in ids] == [True, True, True, False, False]


def test_the_sweep_asks_for_flagged_overlays_never_asked_for_and_nothing_twice(
    settings: Settings, runtime: Runtime, clean_db: None
) -> None:
    sweep(runtime.db, runtime.publisher, settings)  # the broker mark exists from here on
    ids = _flagged(runtime, 4)
    request_explanations(runtime.db, runtime.publisher, ids[:2], settings)
    with runtime.db.transaction() as session:
        session.execute(update(Suggestion).values(updated_at=func.now() - timedelta(hours=1)))
        session.execute(update(Suggestion).where(Suggestion.listing_id == ids[3]).values(explain_error="x"))
    # Asked for once (ids 0, 1), failed for good (id 3): only id 2 is asked for, and only once,
    # however many sweeps run while no explain worker takes the messages.
    assert [sweep(runtime.db, runtime.publisher, settings).explanations for _ in range(5)] == [1, 0, 0, 0, 0]
    assert _depth(settings, EXPLAIN_QUEUE) == 3
