"""Queue `embed`: batches of listing ids through the backbone (see `common.pipeline`)."""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

from celery_batches import Batches, SimpleRequest

from common.clustering import sampled_for_explanation
from common.config import get_settings
from common.events import send_explanations
from common.pipeline import EmbedPipeline
from common.queues import EMBED_TASK
from common.vision import Backbone
from workers.app import app, settings
from workers.monitoring import batch_events

log = logging.getLogger(__name__)


_loading = threading.Lock()


@lru_cache(maxsize=1)
def _create_pipeline() -> EmbedPipeline:
    settings = get_settings()
    backbone = Backbone.from_settings(settings, allow_random=settings.allow_random_weights)
    log.info("embed worker ready: %s on %s (%d-d)", backbone.backbone_id, backbone.device, backbone.dim)
    return EmbedPipeline(settings, backbone)


def pipeline() -> EmbedPipeline:
    # Created on the first batch, inside the process that runs it: no CUDA in a forking parent.
    # The lock keeps the worker's two threads from loading the model twice.
    with _loading:
        return _create_pipeline()


@app.task(
    name=EMBED_TASK,
    base=Batches,
    flush_every=settings.batch_size,
    flush_interval=settings.flush_interval,
    acks_late=True,
)
def embed_listings(requests: list[SimpleRequest]) -> None:
    listing_ids = [int(request.args[0]) for request in requests]
    with batch_events(app, requests):
        report = pipeline().run(listing_ids)
    sample = [i for i in report.suggested if sampled_for_explanation(i, settings.explain_sample_rate)]
    send_explanations(sorted(set(report.needs_review) | set(sample)), app=app)
    log.info(
        "embedded %d, failed %d, skipped %d in %.2fs (prepare %.2fs, forward %.2fs, write %.2fs)",
        len(report.embedded),
        len(report.failed),
        len(report.skipped),
        report.seconds["total"],
        report.seconds["prepare"],
        report.seconds["forward"],
        report.seconds["write"],
    )
