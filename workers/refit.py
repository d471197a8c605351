"""Queue `refit`: the periodic clustering refit and the sweep of what the broker may not hold."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from common.delivery.queues import REFIT_TASK, SWEEP_TASK
from common.delivery.sweep import sweep
from common.jobs.refit import first_refit_due, follow_up_refit, refit
from workers.app import app, runtime

log = logging.getLogger(__name__)

# Beats drift by seconds: a clustering younger than this share of the interval is recent enough,
# so however many beats run, one refit happens per interval.
FRESH_SHARE_OF_INTERVAL = 0.9


# acks_late is off here on purpose: a refit that dies is simply run at the next beat, and
# redelivering a long refit to a second worker would only meet the lock.
@app.task(name=REFIT_TASK, acks_late=False)
def refit_task() -> dict[str, Any]:
    rt = runtime()
    result = refit(rt.db, rt.settings, min_age=FRESH_SHARE_OF_INTERVAL * rt.settings.refit.interval)
    if result.skipped_reason is None:
        follow_up_refit(rt.db, rt.publisher, rt.store, rt.settings, result)
    return {key: value for key, value in asdict(result).items() if key not in ("explain", "superseded")}


@app.task(name=SWEEP_TASK, acks_late=False)
def sweep_task() -> dict[str, Any]:
    rt = runtime()
    result = sweep(rt.db, rt.publisher, rt.settings)
    if result.listings or result.explanations or result.reconciled:
        log.warning(
            "sent %d listings and %d overlay requests again; %d messages found lost in the broker",
            result.listings, result.explanations, result.reconciled,
        )  # fmt: skip
    # Cold start: the first clustering is made as soon as enough labelled listings are embedded,
    # not an interval later. A second request while it runs meets the refit lock and is skipped.
    due = first_refit_due(rt.db, rt.settings)
    if due is not None:
        log.info(
            "no clustering yet and %d labelled listings embedded: asking for the first refit", due.labelled
        )
        refit_task.delay()
    return asdict(result)
