"""Queue `explain`: batches of listing ids → Grad-CAM overlays in object storage (see `common.explain`)."""

from __future__ import annotations

import logging
import threading

from celery_batches import SimpleRequest

from common.explain import explain_listings, record_explain_error, retry_delay
from common.queues import EXPLAIN_TASK
from common.vision import Backbone
from workers.app import app, runtime
from workers.batching import ExplainBatches, batch_events

log = logging.getLogger(__name__)

_backbone: Backbone | None = None
_loading = threading.Lock()


def backbone() -> Backbone:
    """Created by the first batch, inside the process that runs it: no CUDA in a forking parent.

    The classifier is kept so that listings without a clustering can use the ImageNet target.
    """
    global _backbone
    with _loading:
        if _backbone is None:
            _backbone = Backbone.from_settings(runtime().settings, with_classifier=True)
            log.info("explain worker ready: %s on %s", _backbone.backbone_id, _backbone.device)
        return _backbone


@app.task(name=EXPLAIN_TASK, base=ExplainBatches, acks_late=True)
def explain_batch(requests: list[SimpleRequest]) -> None:
    rt = runtime()
    attempts: dict[int, int] = {}
    for request in requests:
        listing_id = int(request.args[0])
        attempts[listing_id] = max(attempts.get(listing_id, 0), int(request.kwargs.get("attempt", 0)))
    with batch_events(app, requests):
        report = explain_listings(rt.db, sorted(attempts), rt.settings, backbone(), rt.store)
    # Batches cannot retry single requests; a delayed copy of the message is the retry, and the
    # original is acknowledged. Suggestions never wait for this: they are already committed.
    gave_up = []
    for listing_id in report.retry:
        attempt = attempts[listing_id] + 1
        if attempt > rt.settings.max_attempts:
            gave_up.append(listing_id)
            continue
        rt.publisher.explain([listing_id], attempt=attempt, countdown=retry_delay(attempt))
    if gave_up:
        with rt.db.transaction() as session:
            for listing_id in gave_up:
                detail = f"storage_unavailable: gave up after {rt.settings.max_attempts} retries"
                record_explain_error(session, listing_id, detail)
    log.info(
        "explained %d (%d new), skipped %d, failed %d, retrying %d, gave up %d",
        len(report.explained),
        sum(1 for done in report.explained.values() if done.written),
        len(report.skipped),
        len(report.failed),
        len(report.retry) - len(gave_up),
        len(gave_up),
    )
