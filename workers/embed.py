"""Queue `embed`: batches of listing ids through the backbone (see `common.pipeline`)."""

from __future__ import annotations

import logging
import threading

from celery_batches import SimpleRequest

from common.pipeline import EmbedPipeline
from common.queues import EMBED_TASK
from common.vision import Backbone
from workers.app import app, runtime
from workers.batching import EmbedBatches, batch_events

log = logging.getLogger(__name__)

_pipeline: EmbedPipeline | None = None
_loading = threading.Lock()


def pipeline() -> EmbedPipeline:
    """Created by the first batch, inside the process that runs it: no CUDA in a forking parent.

    The lock keeps the worker's two threads from loading the model twice.
    """
    global _pipeline
    with _loading:
        if _pipeline is None:
            rt = runtime()
            backbone = Backbone.from_settings(rt.settings, allow_random=rt.settings.allow_random_weights)
            log.info(
                "embed worker ready: %s on %s (%d-d)", backbone.backbone_id, backbone.device, backbone.dim
            )
            _pipeline = EmbedPipeline(rt.settings, rt.db, backbone, rt.store)
        return _pipeline


@app.task(name=EMBED_TASK, base=EmbedBatches, acks_late=True)
def embed_listings(requests: list[SimpleRequest]) -> None:
    listing_ids = [int(request.args[0]) for request in requests]
    with batch_events(app, requests):
        report = pipeline().run(listing_ids)
    runtime().publisher.explain(report.explain)
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
