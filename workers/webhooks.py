"""Queue `webhooks`: posting the due webhook deliveries (see `common.webhooks.sender`)."""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict
from typing import Any

from common.delivery.queues import WEBHOOK_TASK
from common.webhooks.sender import Sender
from workers.app import app, runtime

log = logging.getLogger(__name__)

_sender: Sender | None = None
_lock = threading.Lock()


def sender() -> Sender:
    """One client and one thread pool per worker process, made by its first task."""
    global _sender
    with _lock:
        if _sender is None:
            _sender = Sender(runtime().settings)
        return _sender


# Not acknowledged late: a send lost with its worker is the next beat's (the rows are in
# Postgres, leased deliveries come back when their lease ends).
@app.task(name=WEBHOOK_TASK, acks_late=False)
def send_webhooks_task() -> dict[str, Any]:
    rt = runtime()
    # Bounded, so the next beat's task (or a nudge) is not kept waiting behind one endless drain.
    report = sender().drain(rt.db, budget=max(30.0, 10 * rt.settings.delivery.webhook_interval))
    if report.delivered or report.retrying or report.failed:
        log.info(
            "webhooks: %d delivered, %d to try again, %d failed for good (%.2fs)",
            report.delivered, report.retrying, report.failed, report.seconds,
        )  # fmt: skip
    return {key: value for key, value in asdict(report).items() if key != "outcomes"}
