"""Queue `refit`: the periodic clustering refit and the sweep of listings left queued."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from common.events import sweep_missing_explanations, sweep_stale_listings
from common.queues import REFIT_TASK, SWEEP_TASK
from common.refit import refit
from workers.app import app, runtime

log = logging.getLogger(__name__)


# acks_late is off here on purpose: a refit that dies is simply run at the next beat, and
# redelivering a long refit to a second worker would only meet the lock.
@app.task(name=REFIT_TASK, acks_late=False)
def refit_task() -> dict[str, Any]:
    rt = runtime()
    result = refit(rt.db, rt.settings)
    rt.publisher.explain(result.explain)
    return asdict(result)


@app.task(name=SWEEP_TASK, acks_late=False)
def sweep_task() -> int:
    rt = runtime()
    age = timedelta(seconds=rt.settings.requeue_after)
    resent = sweep_stale_listings(rt.db, rt.publisher, age)
    if resent:
        log.warning("re-sent %d listings left queued for over %ss", len(resent), rt.settings.requeue_after)
    explain = sweep_missing_explanations(rt.db, rt.publisher, age)
    if explain:
        log.warning(
            "asked again for %d overlays missing for over %ss", len(explain), rt.settings.requeue_after
        )
    return len(resent) + len(explain)
