"""The sweep's routine INFO lines are dropped; its warnings and everything about other tasks stay."""

from __future__ import annotations

import logging

from workers.logging_setup import QUIET


def record(level: int, message: str, args: object) -> logging.LogRecord:
    # As logging itself does: one mapping argument becomes the record's args.
    wrapped = (args,) if isinstance(args, dict) else args
    return logging.LogRecord("celery.app.trace", level, __file__, 1, message, wrapped, None)  # type: ignore[arg-type]


def test_only_the_routine_sweep_lines_are_dropped() -> None:
    succeeded = "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s"
    assert not QUIET.filter(record(logging.INFO, succeeded, {"name": "vitrine.sweep_stale", "id": "1"}))
    assert not QUIET.filter(
        record(logging.INFO, "Task %(name)s[%(id)s] received", {"name": "vitrine.sweep_stale"})
    )
    due = "Scheduler: Sending due task %s (%s)"
    assert not QUIET.filter(record(logging.INFO, due, ("sweep-stale-listings", "vitrine.sweep_stale")))
    assert QUIET.filter(record(logging.INFO, due, ("refit", "vitrine.refit")))
    assert QUIET.filter(record(logging.INFO, succeeded, {"name": "vitrine.embed_listings", "id": "2"}))
    assert QUIET.filter(record(logging.ERROR, "Task %(name)s raised", {"name": "vitrine.sweep_stale"}))
    assert QUIET.filter(record(logging.INFO, "plain line", None))


def test_celerys_handlers_take_the_process_format() -> None:
    from common.ops.logs import JsonFormatter
    from workers import logging_setup

    logger = logging.Logger("celery-like")
    logger.addHandler(logging.StreamHandler())
    logging_setup.LOG_FORMAT[0] = "json"
    try:
        logging_setup._format_and_quiet(logger)
    finally:
        logging_setup.LOG_FORMAT[0] = "text"
    (handler,) = logger.handlers
    assert isinstance(handler.formatter, JsonFormatter) and QUIET in handler.filters
