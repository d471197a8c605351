"""Queue `explain`: batches of listing ids → Grad-CAM overlays in object storage (see `common.explain`)."""

from __future__ import annotations

import logging
from functools import lru_cache

from celery_batches import Batches, SimpleRequest

from common.config import get_settings
from common.db import session_scope
from common.explain import explain_listings, record_explain_error, retry_delay
from common.queues import EXPLAIN_QUEUE, EXPLAIN_TASK
from common.storage import ObjectStore
from common.vision import Backbone
from workers.app import app, settings
from workers.monitoring import batch_events

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def backbone() -> Backbone:
    # Created on the first batch, inside the process that runs it: no CUDA in a forking parent.
    # The classifier is kept so that listings without a clustering can use the ImageNet target.
    loaded = Backbone.from_settings(get_settings(), with_classifier=True)
    log.info("explain worker ready: %s on %s", loaded.backbone_id, loaded.device)
    return loaded


@lru_cache(maxsize=1)
def store() -> ObjectStore:
    return ObjectStore.from_settings(get_settings())


@app.task(
    name=EXPLAIN_TASK,
    base=Batches,
    flush_every=settings.batch_size,
    flush_interval=settings.flush_interval,
    acks_late=True,
)
def explain_batch(requests: list[SimpleRequest]) -> None:
    attempts: dict[int, int] = {}
    for request in requests:
        listing_id = int(request.args[0])
        attempts[listing_id] = max(attempts.get(listing_id, 0), int(request.kwargs.get("attempt", 0)))
    with batch_events(app, requests):
        report = explain_listings(sorted(attempts), get_settings(), backbone(), store())
    # Batches cannot retry single requests; a delayed copy of the message is the retry, and the
    # original is acknowledged. Suggestions never wait for this: they are already committed.
    gave_up = []
    for listing_id in report.retry:
        attempt = attempts[listing_id] + 1
        if attempt > settings.max_attempts:
            gave_up.append(listing_id)
            continue
        app.send_task(
            EXPLAIN_TASK,
            args=[listing_id],
            kwargs={"attempt": attempt},
            queue=EXPLAIN_QUEUE,
            countdown=retry_delay(attempt),
        )
    if gave_up:
        with session_scope() as session:
            for listing_id in gave_up:
                record_explain_error(
                    session, listing_id, f"storage_unavailable: gave up after {settings.max_attempts} retries"
                )
    log.info(
        "explained %d (%d new), skipped %d, failed %d, retrying %d, gave up %d",
        len(report.explained),
        sum(1 for done in report.explained.values() if done.written),
        len(report.skipped),
        len(report.failed),
        len(report.retry) - len(gave_up),
        len(gave_up),
    )
