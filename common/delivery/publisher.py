"""Sending Vitrine's task messages: a Celery app used only as a producer, built from the settings."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Any

import kombu.exceptions
import redis
from celery import Celery

from common.delivery.queues import (
    EMBED_QUEUE,
    EMBED_TASK,
    EXPLAIN_QUEUE,
    EXPLAIN_TASK,
    RETRY_KWARG,
    declarations,
    routes,
)
from common.settings import Settings

# kombu's Redis transport keeps one list per priority step: `name`, then `name\x06\x16{step}`.
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
# Written by the sweep, gone when Redis restarts empty (it keeps nothing on disk): its absence
# means every message the broker held is lost.
BROKER_MARK_KEY = "vitrine:broker-mark"
# What a broker that is down or unreachable raises through Celery, kombu or redis-py.
BROKER_ERRORS = (OSError, redis.RedisError, kombu.exceptions.KombuError)
# kombu's Redis transport: the hash of delivered, unacknowledged messages (a worker's reserved
# and prefetched ones, and ETA messages waiting for their time), by delivery tag.
KOMBU_UNACKED_KEY = "unacked"
# Redis commands per pipelined round trip when publishing a list (two per message: the message
# and its task-sent event). Should a flush fail, the rows stay unmarked and the sweep sends them.
PUBLISH_BATCH = 1000


def producer_app(settings: Settings, name: str = "vitrine-publisher") -> Celery:
    """A Celery app that knows the broker and the queues, and nothing about the tasks' code."""
    app = Celery(name, broker=settings.services.broker_url, set_as_current=False)
    app.conf.update(
        task_queues=declarations(),
        task_routes=routes(),
        task_serializer="json",
        accept_content=["json"],
        task_send_sent_event=True,
    )
    return app


def queue_lists(queue: str) -> list[str]:
    """The Redis lists that hold `queue`'s waiting messages, one per priority step."""
    return [queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{step}" for step in KOMBU_PRIORITY_STEPS]


def _listing_ids(message: dict[str, Any], task: str) -> list[int]:
    """The listing id a kombu message of `task` carries (its first argument), if it is one."""
    if message.get("headers", {}).get("task") != task:
        return []
    body = message.get("body", "")
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return [int(args[0])] if args else []


def queue_depths(client: redis.Redis, queues: Sequence[str]) -> dict[str, int]:
    """Messages waiting in each queue (all priority steps of kombu's Redis lists), in one round trip."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for name in queue_lists(queue):
            pipe.llen(name)
    lengths = pipe.execute()
    steps = len(KOMBU_PRIORITY_STEPS)
    return {queue: int(sum(lengths[i * steps : (i + 1) * steps])) for i, queue in enumerate(queues)}


class Publisher:
    """Puts listing ids on the `embed` and `explain` queues, and answers questions about them."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.broker_noted = False  # whether Postgres knows the broker this publisher sends to

    @classmethod
    def from_settings(cls, settings: Settings) -> Publisher:
        return cls(producer_app(settings))

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.app.conf.broker_url, socket_connect_timeout=5, socket_timeout=10)

    def embed(self, listing_ids: Iterable[int], *, retry: int = 0, countdown: float | None = None) -> None:
        kwargs = {RETRY_KWARG: retry} if retry else {}
        # One producer for the whole list, and its Redis commands sent in pipelined round trips
        # (kombu's publish batch) rather than one round trip per message and per sent-event.
        with self.app.producer_or_acquire() as producer, producer.batch(PUBLISH_BATCH):
            for listing_id in listing_ids:
                self.app.send_task(
                    EMBED_TASK,
                    args=[int(listing_id)],
                    kwargs=kwargs,
                    queue=EMBED_QUEUE,
                    countdown=countdown,
                    producer=producer,
                )

    def explain(self, listing_ids: Iterable[int], *, retry: int = 0, countdown: float | None = None) -> None:
        """Ask for Grad-CAM overlays; `retry` > 0 marks a retry, sent after `countdown` seconds."""
        kwargs = {RETRY_KWARG: retry} if retry else {}
        with self.app.producer_or_acquire() as producer, producer.batch(PUBLISH_BATCH):
            for listing_id in listing_ids:
                self.app.send_task(
                    EXPLAIN_TASK,
                    args=[int(listing_id)],
                    kwargs=kwargs,
                    queue=EXPLAIN_QUEUE,
                    countdown=countdown,
                    producer=producer,
                )

    def queue_depth(self, queue: str) -> int:
        return queue_depths(self.redis, [queue])[queue]

    def listings_held(self, queue: str, task: str, limit: int) -> set[int] | None:
        """The listing ids of every `task` message the broker holds for `queue`: waiting in its
        lists or delivered and not yet acknowledged. None when more than `limit` messages wait
        (a backlog explains any wait; the scan would cost more than it could find)."""
        if self.queue_depth(queue) > limit:
            return None
        # One MULTI: the lists and the unacknowledged record as of one instant, so a message that
        # a restore moves from the record back to a list is seen in one of them.
        pipe = self.redis.pipeline(transaction=True)
        lists = queue_lists(queue)
        for name in lists:
            pipe.lrange(name, 0, -1)
        pipe.hvals(KOMBU_UNACKED_KEY)
        *lengths, delivered = pipe.execute()
        waiting = [raw for found in lengths for raw in found]
        held: set[int] = set()
        for raw in waiting:
            held.update(_listing_ids(json.loads(raw), task))
        for raw in delivered:
            held.update(_listing_ids(json.loads(raw)[0], task))
        return held

    def broker_identity(self) -> str:
        """The Redis server's run id: a new one each time the server starts."""
        return str(self.redis.info("server")["run_id"])

    def broker_kept_mark(self) -> bool:
        """Whether the broker still holds the mark the sweep leaves (gone when it lost its data);
        leaves it there for the next time."""
        return not self.redis.set(BROKER_MARK_KEY, uuid.uuid4().hex, nx=True)

    def close(self) -> None:
        if "redis" in self.__dict__:
            self.redis.close()
        self.app.close()
