"""What the batched queues share: batch sizes from the settings, delivery that loses nothing, and
task events per message.

celery-batches runs one function for many messages. Three things are added to it here:
- a batch that raises hands its messages back to the broker (celery-batches would acknowledge
  them, and they would be lost);
- the messages a worker holds are renewed in Redis while it lives, so the broker's visibility
  time-out measures how long a *dead* worker's messages wait, not how long a batch may take;
- after a broker reconnect the timed flush starts again (celery-batches kept the handle of a
  timer that Celery had cleared, and a partial batch waited for a full one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import redis
from celery import Celery
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest

from common.delivery.publisher import BROKER_ERRORS
from workers.app import runtime

log = logging.getLogger(__name__)

# kombu's Redis transport: the sorted set of delivered, unacknowledged messages, scored by
# delivery time; a message whose score is older than the visibility time-out is put back.
UNACKED_INDEX_KEY = "unacked_index"


class HeldMessages:
    """Delivery tags of the messages this worker holds, renewed in the broker while it lives."""

    def __init__(self) -> None:
        self._tags: set[str] = set()
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None

    def add(self, tag: str) -> None:
        with self._lock:
            self._tags.add(tag)

    def discard(self, tags: Collection[str]) -> None:
        with self._lock:
            self._tags.difference_update(tags)

    def renew(self, broker_url: str) -> None:
        with self._lock:
            tags = list(self._tags)
        if not tags:
            return
        if self._client is None:
            self._client = redis.Redis.from_url(broker_url, socket_connect_timeout=5, socket_timeout=5)
        try:
            # XX: only messages still held; one the broker already put back stays put back.
            self._client.zadd(UNACKED_INDEX_KEY, dict.fromkeys(tags, time.time()), xx=True)
        except redis.RedisError as error:
            log.warning("could not renew %d held messages: %s", len(tags), error)


class ReliableBatches(Batches):
    """Flush at `VITRINE_BATCH_SIZE` messages or after `VITRINE_FLUSH_INTERVAL` seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.held = HeldMessages()
        self._renewal: Any = None
        self._tref: Any = None

    @property
    def flush_every(self) -> int:
        return runtime().settings.embed.batch_size

    @property
    def flush_interval(self) -> float:
        return runtime().settings.embed.flush_interval

    def Strategy(self, task: Batches, app: Celery, consumer: Consumer) -> Callable[..., None]:
        # Called again whenever the consumer restarts (a broker reconnect). The old flush timer
        # died with the old hub: forget it, so the next message starts a new one.
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        if self._renewal is not None:
            self._renewal.cancel()
        settings = runtime().settings
        self._renewal = consumer.timer.call_repeatedly(
            settings.delivery.visibility_timeout / 4, self.held.renew, (app.conf.broker_url,)
        )
        handler = super().Strategy(task, app, consumer)

        def hold_then_handle(message: Any, *args: Any, **kwargs: Any) -> None:
            self.held.add(message.delivery_tag)
            handler(message, *args, **kwargs)

        return hold_then_handle

    def flush(self, requests: Collection[Request]) -> Any:
        """Run the batch; acknowledge its messages when it returns, hand them back when it raises."""
        serializable = ([SimpleRequest.from_request(r) for r in requests],)
        tags = [r.message.delivery_tag for r in requests]

        def on_return(result: Any) -> None:
            handed_back = isinstance(result, BatchFailed)
            for request in requests:
                try:
                    if handed_back:
                        request.reject(requeue=True)
                    else:
                        request.acknowledge()
                except BROKER_ERRORS as error:
                    # The broker is away: the message stays unacknowledged there, and is
                    # redelivered after the visibility time-out (it is no longer renewed).
                    log.warning("could not settle message %s: %s", request.id, error)
            self.held.discard(tags)

        from celery_batches.trace import apply_batches_task

        return self._pool.apply_async(apply_batches_task, (self, serializable, 0, None), callback=on_return)


class ExplainBatches(ReliableBatches):
    """Grad-CAM holds activations and gradients: its own, smaller batch size."""

    @property
    def flush_every(self) -> int:
        return runtime().settings.explain.batch_size


class BatchFailed:
    """Returned by a batch task whose work raised: its messages go back to the broker."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


@contextmanager
def batch_events(app: Celery, requests: list[SimpleRequest]) -> Iterator[None]:
    """Per-message task events for Flower; best effort, never a reason for the work to fail."""
    events = ExitStack()
    dispatcher = None
    if app.conf.worker_send_task_events and requests:
        try:
            dispatcher = events.enter_context(app.events.default_dispatcher(hostname=requests[0].hostname))
        except BROKER_ERRORS as error:
            log.warning("task events unavailable: %s", error)
    started = time.monotonic()
    # `received` carries the task's name and arguments, which Flower lists and filters by.
    _send(
        dispatcher,
        requests,
        "task-received",
        lambda r: {"name": r.name, "args": repr(r.args), "kwargs": repr(r.kwargs)},
    )
    _send(dispatcher, requests, "task-started", lambda r: {})
    try:
        yield
    except BaseException as error:
        failure = repr(error)
        _send(dispatcher, requests, "task-failed", lambda r: {"exception": failure})
        raise
    else:
        elapsed = time.monotonic() - started
        _send(dispatcher, requests, "task-succeeded", lambda r: {"result": None, "runtime": elapsed})
    finally:
        try:
            events.close()
        except BROKER_ERRORS as error:
            log.warning("task events not flushed: %s", error)


def _send(
    dispatcher: Any,
    requests: list[SimpleRequest],
    kind: str,
    fields: Callable[[SimpleRequest], dict[str, Any]],
) -> None:
    if dispatcher is None:
        return
    try:
        for request in requests:
            dispatcher.send(kind, uuid=request.id, **fields(request))
    except BROKER_ERRORS as error:
        log.warning("task event %s not sent: %s", kind, error)
