"""Queue `embed`: batches of listing ids through the backbone (see `common.jobs.embed`)."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import TYPE_CHECKING

from celery.signals import worker_init
from celery_batches import SimpleRequest
from sqlalchemy.exc import SQLAlchemyError

from common.delivery.outbox import request_explanations, send_listings
from common.delivery.publisher import BROKER_ERRORS
from common.delivery.queues import EMBED_QUEUE, EMBED_TASK, RETRY_KWARG
from common.settings import ConfigError
from workers.app import app, runtime
from workers.batching import BatchFailed, ReliableBatches, batch_events

# torch and the vision stack are imported by the process that embeds, never at import: beat and
# Flower import this module (the app's `include`) and run in the slim image, which has no torch.
if TYPE_CHECKING:
    from common.jobs.embed import BatchReport, EmbedPipeline

log = logging.getLogger(__name__)

FOLLOW_UP_ERRORS: tuple[type[Exception], ...] = (*BROKER_ERRORS, SQLAlchemyError)

_pipeline: EmbedPipeline | None = None
_loading = threading.Lock()


def pipeline() -> EmbedPipeline:
    """Created by the first batch, inside the process that runs it: no CUDA in a forking parent.

    The lock keeps the worker's two threads from loading the model twice.
    """
    global _pipeline
    with _loading:
        if _pipeline is None:
            from common.jobs.embed import EmbedPipeline
            from common.vision.backbone import Backbone

            rt = runtime()
            backbone = Backbone.from_settings(
                rt.settings, allow_random=rt.settings.backbone.allow_random_weights
            )
            log.info(
                "embed worker ready: %s on %s (%d-d)", backbone.backbone_id, backbone.device, backbone.dim
            )
            _pipeline = EmbedPipeline(rt.settings, rt.db, backbone, rt.store)
        return _pipeline


@worker_init.connect
def check_embed_settings(sender: object = None, **_: object) -> None:
    """A device or precision that cannot run stops an embed worker at start, not at its first batch."""
    queues = getattr(getattr(sender, "app", app).amqp.queues, "consume_from", None) or {}
    if EMBED_QUEUE not in queues:
        return
    from common.vision.backbone import check_device

    try:
        device, precision = check_device(runtime().settings)
    except ConfigError as error:
        # Celery logs and swallows exceptions from signal handlers; SystemExit stops the worker.
        log.critical("%s", error)
        raise SystemExit(f"embed worker not started: {error}") from None
    log.info("embed worker: %s at %s", device, precision)


@app.task(name=EMBED_TASK, base=ReliableBatches, acks_late=True)
def embed_listings(requests: list[SimpleRequest]) -> BatchFailed | None:
    listing_ids = [int(request.args[0]) for request in requests]
    retries = {int(request.args[0]): int(request.kwargs.get(RETRY_KWARG, 0)) for request in requests}
    try:
        with batch_events(app, requests):
            report = pipeline().run(listing_ids, retries)
    except Exception as error:
        # Not one photo's doing (those are settled inside): the messages go back to the broker.
        log.exception("embed batch of %d failed; its messages go back to the broker", len(requests))
        return BatchFailed(error)
    send_follow_ups(report, retries)
    log.info(
        "embedded %d, failed %d, retrying %d, suspects %d, skipped %d "
        "(prepare %.2fs, forward %.2fs, write %.2fs)",
        len(report.embedded),
        len(report.failed),
        len(report.retry),
        len(report.suspects),
        len(report.skipped),
        report.seconds["prepare"],
        report.seconds["forward"],
        report.seconds["write"],
    )
    return None


def send_follow_ups(report: BatchReport, retries: dict[int, int]) -> None:
    """After the batch committed: tries again later, and overlay requests. Postgres has the account
    of both, so a broker that is away now only delays them until the sweep."""
    rt = runtime()
    by_delay: dict[tuple[float, int], list[int]] = defaultdict(list)
    for listing_id, delay in report.retry.items():
        by_delay[(delay, retries.get(listing_id, 0) + 1)].append(listing_id)
    try:
        for (delay, retry), ids in by_delay.items():
            send_listings(rt.db, rt.publisher, ids, retry=retry, countdown=delay)
        request_explanations(rt.db, rt.publisher, report.explain, rt.settings)
    except FOLLOW_UP_ERRORS as error:
        log.warning("follow-up messages not sent (%s); the sweep will send them", error)
