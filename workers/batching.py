"""What the batched queues share: batch sizes from the settings, and task events per message.

celery-batches runs one function for many messages and emits no per-message events; without
ours, every batched task would stay "PENDING" in Flower forever.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery
from celery_batches import Batches, SimpleRequest

from workers.app import runtime


class EmbedBatches(Batches):
    """Flush at `VITRINE_BATCH_SIZE` messages or after `VITRINE_FLUSH_INTERVAL` seconds."""

    @property
    def flush_every(self) -> int:
        return runtime().settings.batch_size

    @property
    def flush_interval(self) -> float:
        return runtime().settings.flush_interval


class ExplainBatches(EmbedBatches):
    """Grad-CAM holds activations and gradients: its own, smaller batch size."""

    @property
    def flush_every(self) -> int:
        return runtime().settings.explain_batch_size


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
        except BaseException as error:
            for request in requests:
                dispatcher.send("task-failed", uuid=request.id, exception=repr(error))
            raise
        elapsed = time.monotonic() - started
        for request in requests:
            dispatcher.send("task-succeeded", uuid=request.id, result=None, runtime=elapsed)
