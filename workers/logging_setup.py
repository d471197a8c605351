"""Celery's logging in the process's one format (`common.ops.logs`), without the sweep's chatter.

Beat sends the sweep every `VITRINE_SWEEP_INTERVAL` (15 s), and Celery logs three INFO lines
for each run (sent, received, succeeded): about 8,600 a day that say nothing. The sweep task
itself logs a WARNING whenever it did send something again, so nothing of use is lost; its
failures (ERROR) are kept too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery.signals import after_setup_logger, after_setup_task_logger

from common.delivery.queues import SWEEP_TASK
from common.ops import logs


class QuietSweep(logging.Filter):
    """Drops records below WARNING whose arguments name the sweep task."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        args = record.args
        values: Iterable[object] = args.values() if isinstance(args, dict) else (args or ())
        return not any(isinstance(v, str) and SWEEP_TASK in v for v in values)


QUIET = QuietSweep()
# The process's `settings.ops.log_format`, set by `workers.app` when Celery reads its configuration
# (which it does before it sets up logging).
LOG_FORMAT = ["text"]


@after_setup_logger.connect
@after_setup_task_logger.connect
def _format_and_quiet(logger: logging.Logger, **_: object) -> None:
    # On the handlers: a filter on a logger does not see records propagated from its children.
    for handler in logger.handlers:
        logs.attach(handler, LOG_FORMAT[0])
        if QUIET not in handler.filters:
            handler.addFilter(QUIET)
