"""Sending Vitrine's task messages: a Celery app used only as a producer, built from the settings."""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from common.config import Settings
from common.queues import EMBED_QUEUE, EMBED_TASK, EXPLAIN_QUEUE, EXPLAIN_TASK, declarations, routes


def producer_app(settings: Settings, name: str = "vitrine-publisher") -> Celery:
    """A Celery app that knows the broker and the queues, and nothing about the tasks' code."""
    app = Celery(name, broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_queues=declarations(),
        task_routes=routes(),
        task_serializer="json",
        accept_content=["json"],
        task_send_sent_event=True,
    )
    return app


class Publisher:
    """Puts listing ids on the `embed` and `explain` queues."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    @classmethod
    def from_settings(cls, settings: Settings) -> Publisher:
        return cls(producer_app(settings))

    def embed(self, listing_ids: Iterable[int]) -> None:
        for listing_id in listing_ids:
            self.app.send_task(EMBED_TASK, args=[int(listing_id)], queue=EMBED_QUEUE)

    def explain(
        self, listing_ids: Iterable[int], *, attempt: int = 0, countdown: float | None = None
    ) -> None:
        """Ask for Grad-CAM overlays; `attempt` > 0 marks a retry, sent after `countdown` seconds."""
        kwargs = {"attempt": attempt} if attempt else {}
        for listing_id in listing_ids:
            self.app.send_task(
                EXPLAIN_TASK, args=[int(listing_id)], kwargs=kwargs, queue=EXPLAIN_QUEUE, countdown=countdown
            )

    def close(self) -> None:
        self.app.close()
