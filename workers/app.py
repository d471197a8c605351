"""The Celery application: Redis transport, late acks, queues `embed`, `explain`, `refit`, `webhooks`.

Importing this module reads no settings. The process's settings are read once, when Celery first
needs its configuration (the start of a worker, beat or Flower), and kept in `runtime()`.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from celery import Celery

from common.delivery.queues import (
    EMBED_QUEUE,
    REFIT_QUEUE,
    REFIT_TASK,
    SWEEP_TASK,
    WEBHOOK_QUEUE,
    WEBHOOK_TASK,
    declarations,
    routes,
)
from common.runtime import Runtime
from common.settings import Settings, load_settings
from workers import logging_setup  # its logging signal handlers, for workers and beat

RESTORE_SCAN_SECONDS = 5

app = Celery("vitrine", include=["workers.embed", "workers.explain", "workers.refit", "workers.webhooks"])

_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """This worker process's settings, database, publisher and object store, made once."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime(load_settings(), app=app)
        return _runtime


def celery_config(settings: Settings) -> dict[str, Any]:
    logging_setup.LOG_FORMAT[0] = settings.ops.log_format
    return {
        "broker_url": settings.services.broker_url,
        # Results live in Postgres; the broker carries only work.
        "task_ignore_result": True,
        "result_backend": None,
        "task_queues": declarations(),
        "task_default_queue": EMBED_QUEUE,
        "task_routes": routes(),
        # Acknowledge after the batch's transaction commits; a killed worker loses nothing.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Batching needs the worker to hold a full batch unacknowledged, plus the next one so the
        # broker round-trip hides behind the forward pass.
        "worker_prefetch_multiplier": max(4, 2 * settings.embed.batch_size),
        # A delivered message that goes unrenewed this long (its worker died) is put back by any
        # worker's poller, which looks every few seconds; live workers renew theirs (batching).
        "broker_transport_options": {
            "visibility_timeout": settings.delivery.visibility_timeout,
            "unacked_restore_interval": RESTORE_SCAN_SECONDS,
            "unacked_restore_throttle": 1,
        },
        "broker_connection_retry_on_startup": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "beat_schedule": {
            "refit": {
                "task": REFIT_TASK,
                "schedule": timedelta(seconds=settings.refit.interval),
                "options": {"queue": REFIT_QUEUE, "expires": settings.refit.interval},
            },
            "sweep-stale-listings": {
                "task": SWEEP_TASK,
                "schedule": timedelta(seconds=settings.delivery.sweep_interval),
                "options": {"queue": REFIT_QUEUE, "expires": settings.delivery.sweep_interval},
            },
            "send-webhooks": {
                "task": WEBHOOK_TASK,
                "schedule": timedelta(seconds=settings.delivery.webhook_interval),
                "options": {"queue": WEBHOOK_QUEUE, "expires": settings.delivery.webhook_interval},
            },
        },
    }


# A promise: evaluated when the configuration is first read, not at import.
app.add_defaults(lambda: celery_config(runtime().settings))
