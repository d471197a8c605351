"""Task events for batched requests, so Flower shows each listing's message start and finish.

celery-batches runs one function for many messages and emits no per-message events; without
these, every batched task would stay "PENDING" in Flower forever.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery
from celery_batches import SimpleRequest


@contextmanager
def batch_events(app: Celery, requests: list[SimpleRequest]) -> Iterator[None]:
    if not app.conf.worker_send_task_events or not requests:
        yield
        return
    hostname = requests[0].hostname
    started = time.monotonic()
    with app.events.default_dispatcher(hostname=hostname) as dispatcher:
        for request in requests:
            # `received` carries the task's name and arguments, which Flower lists and filters by.
            dispatcher.send(
                "task-received",
                uuid=request.id,
                name=request.name,
                args=repr(request.args),
                kwargs=repr(request.kwargs),
            )
            dispatcher.send("task-started", uuid=request.id)
        try:
            yield
        except Exception as error:
            for request in requests:
                dispatcher.send("task-failed", uuid=request.id, exception=repr(error))
            raise
        runtime = time.monotonic() - started
        for request in requests:
            dispatcher.send("task-succeeded", uuid=request.id, result=None, runtime=runtime)
