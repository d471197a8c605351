"""The Celery application: Redis transport, late acks, queues `embed`, `explain` and `refit`."""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from kombu import Exchange, Queue

from common.config import get_settings
from common.queues import EMBED_QUEUE, EXPLAIN_QUEUE, QUEUES, REFIT_QUEUE, REFIT_TASK, SWEEP_TASK

settings = get_settings()

app = Celery(
    "vitrine", broker=settings.broker_url, include=["workers.embed", "workers.explain", "workers.refit"]
)
app.conf.update(
    # Results live in Postgres; the broker carries only work.
    task_ignore_result=True,
    result_backend=None,
    # One direct exchange per queue: a message for one queue is never copied to another.
    task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
    task_default_queue=EMBED_QUEUE,
    task_routes={
        "vitrine.embed_*": {"queue": EMBED_QUEUE},
        "vitrine.explain_*": {"queue": EXPLAIN_QUEUE},
        REFIT_TASK: {"queue": REFIT_QUEUE},
        SWEEP_TASK: {"queue": REFIT_QUEUE},
    },
    # Acknowledge after the batch's transaction commits; a killed worker loses nothing.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Batching needs the worker to hold a full batch unacknowledged, plus the next one so the
    # broker round-trip hides behind the forward pass.
    worker_prefetch_multiplier=max(4, 2 * settings.batch_size),
    # Redis redelivers an unacknowledged message after this; longer than any batch can take.
    broker_transport_options={"visibility_timeout": 3600},
    broker_connection_retry_on_startup=True,
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_serializer="json",
    accept_content=["json"],
    timezone="UTC",
    beat_schedule={
        "refit": {
            "task": REFIT_TASK,
            "schedule": timedelta(seconds=settings.refit_interval),
            "options": {"queue": REFIT_QUEUE, "expires": settings.refit_interval},
        },
        "sweep-stale-listings": {
            "task": SWEEP_TASK,
            "schedule": timedelta(seconds=settings.sweep_interval),
            "options": {"queue": REFIT_QUEUE, "expires": settings.sweep_interval},
        },
    },
)
