"""One log format for every process, text by default and JSON when asked, with request ids.

The command line, the workers and beat (through Celery's logging signals) and the review app
(uvicorn's loggers, and its own access line with the request's duration) all log through
`configure`. `VITRINE_LOG_FORMAT=json` makes each line one JSON object for a log shipper. A
request's id (its `X-Request-ID`, or a new one) is on every line logged while it is served.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request)s: %(message)s"
LogFormat = str  # "text" or "json" (`settings.ops.log_format`)

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on each record (`request_id`; ` [id]` for the text format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = request_id.get()
        record.request_id = current
        record.request = f" [{current}]" if current else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and what applies."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            line["request_id"] = rid
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def attach(handler: logging.Handler, log_format: LogFormat) -> None:
    """Give a handler (ours, or one Celery or uvicorn made) the format and the request id."""
    handler.setFormatter(formatter(log_format))
    if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
        handler.addFilter(RequestIdFilter())


def configure(log_format: LogFormat, level: int = logging.WARNING) -> None:
    """The root logger writes to stderr in `log_format`; Vitrine's own loggers speak at INFO."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    attach(handler, log_format)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("common", "vitrine", "workers", "review", "uvicorn"):
        logging.getLogger(name).setLevel(logging.INFO)
