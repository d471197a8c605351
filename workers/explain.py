"""Queue `explain`: batches of listing ids → Grad-CAM overlays in object storage.

The work is `common.jobs.explain`.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from celery_batches import SimpleRequest
from sqlalchemy.exc import SQLAlchemyError

from common.db import until_available
from common.delivery.publisher import BROKER_ERRORS
from common.delivery.queues import EXPLAIN_TASK, RETRY_KWARG, retry_delay
from workers.app import app, runtime
from workers.batching import ExplainBatches, batch_events

# torch and the vision stack are imported by the process that explains, never at import: beat and
# Flower import this module (the app's `include`) and run in the slim image, which has no torch.
if TYPE_CHECKING:
    from common.jobs.explain import ExplainReport
    from common.vision.backbone import Backbone

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
            settings = runtime().settings
            if settings.backbone.precision == "int8":
                # Grad-CAM needs gradients, which int8 layers have not: the same weights in fp32
                # explain the int8 embedding's decision. (A bf16 CPU worker's are fp32 too: a
                # backbone loaded with its classifier is Grad-CAM's, `Backbone.load`.)
                settings = settings.replace(precision="fp32")
            from common.vision.backbone import Backbone

            _backbone = Backbone.from_settings(settings, with_classifier=True)
            log.info("explain worker ready: %s on %s", _backbone.backbone_id, _backbone.device)
        return _backbone


@app.task(name=EXPLAIN_TASK, base=ExplainBatches, acks_late=True)
def explain_batch(requests: list[SimpleRequest]) -> None:
    from common.jobs.explain import explain_listings, record_explain_errors

    rt = runtime()
    retries: dict[int, int] = {}
    for request in requests:
        listing_id = int(request.args[0])
        # `attempt`: the keyword's name before this release, in messages still queued.
        tried = int(request.kwargs.get(RETRY_KWARG, request.kwargs.get("attempt", 0)))
        retries[listing_id] = max(retries.get(listing_id, 0), tried)
    report: ExplainReport | None = None
    try:
        with batch_events(app, requests):
            report = explain_listings(rt.db, sorted(retries), rt.settings, backbone(), rt.store)
        retry = report.retry
        give_up = f"storage_unavailable: gave up after {rt.settings.embed.max_attempts} tries"
    except Exception as error:
        # A bug of ours, not the photos': every listing of the batch is tried again, within the cap.
        log.exception("explain batch of %d failed", len(requests))
        retry = list(retries)
        give_up = f"internal_error: {type(error).__name__}: {error}"
    errors: dict[int, str] = {}
    # Batches cannot retry single requests; a delayed copy of the message is the retry, and the
    # original is acknowledged. Suggestions never wait for this: they are already committed.
    gave_up = [i for i in retry if retries[i] + 1 > rt.settings.embed.max_attempts]
    for listing_id in retry:
        if listing_id in gave_up:
            errors[listing_id] = give_up
            continue
        try:
            rt.publisher.explain(
                [listing_id], retry=retries[listing_id] + 1, countdown=retry_delay(retries[listing_id])
            )
        except BROKER_ERRORS as error:
            log.warning("retry of overlay %s not sent (%s); the sweep will ask again", listing_id, error)
    if errors:
        try:
            until_available(lambda: record_explain_errors(rt.db, errors), "recording explain errors")
        except SQLAlchemyError as error:
            log.warning("explain errors not recorded: %s", error)
    if report is not None:
        log.info(
            "explained %d (%d new), skipped %d, failed %d, retrying %d, gave up %d",
            len(report.explained),
            sum(1 for done in report.explained.values() if done.written),
            len(report.skipped),
            len(report.failed),
            len(retry) - len(gave_up),
            len(gave_up),
        )
