"""The webhook phase of `vitrine bench review`: delivery throughput and lag to a local receiver.

The bench's decisions record `listing.reviewed` events for a receiver on 127.0.0.1 subscribed
before they start, so their timings include what recording costs. Nothing is sent while the
other phases are timed; then the sender (the webhooks worker's code, run here in a loop at
VITRINE_WEBHOOK_INTERVAL, as beat would) delivers that backlog (throughput), and more decisions
made while it runs measure the lag from an event's row to its receipt.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from common.db import Database
from common.schema import WebhookDelivery
from common.settings import Settings
from common.webhooks.sender import Sender
from common.webhooks.subscriptions import add_subscription
from vitrine.local.receiver import WebhookReceiver

# Decisions made while the sender runs, for the lag figures.
LIVE_DECISIONS = 100
WAIT_SECONDS = 60.0


def subscribe(database: Database, settings: Settings, receiver: WebhookReceiver, source: str) -> Settings:
    """Subscribe the receiver to every event of `source`; the settings that let it be reached."""
    allowed = settings.replace(webhook_private_hosts=[f"127.0.0.1:{receiver.port}"])
    with database.transaction() as session:
        add_subscription(session, source, receiver.url, [], allowed)
    return allowed


class SenderLoop:
    """The worker's send, every `interval` seconds, in a thread of this process."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.sender = Sender(settings)
        self.interval = settings.delivery.webhook_interval
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.sender.drain(self.database, budget=30.0)
            self.stopping.wait(self.interval)

    def __enter__(self) -> SenderLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)
        self.sender.close()


def _wait_for(receiver: WebhookReceiver, count: int) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while len(receiver.delivered()) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"webhooks: {len(receiver.delivered())} of {count} delivered in {WAIT_SECONDS}s"
            )
        time.sleep(0.02)


def _created(database: Database) -> dict[int, float]:
    with database.transaction() as session:
        rows = session.execute(select(WebhookDelivery.id, func.extract("epoch", WebhookDelivery.created_at)))
        return {int(delivery_id): float(at) for delivery_id, at in rows}


def _seconds(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples) or [0.0]
    return {
        "p50_s": round(statistics.median(ordered), 3),
        "p95_s": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
    }


def measure(
    database: Database, settings: Settings, receiver: WebhookReceiver, decide_more: Callable[[int], int]
) -> dict[str, Any]:
    """Deliver the backlog, then `decide_more(LIVE_DECISIONS)` (it returns how many it made) while
    the sender runs; throughput of the first, lag of the second."""
    backlog = len(_created(database))
    started = time.time()
    with SenderLoop(database, settings):
        _wait_for(receiver, backlog)
        backlog_seconds = max((r.at for r in receiver.delivered()), default=started) - started
        made = decide_more(LIVE_DECISIONS)
        _wait_for(receiver, backlog + made)
    created = _created(database)
    got = receiver.delivered()
    first_live = sorted(created)[backlog] if made else None
    live = [
        r.at - created[r.delivery_id] for r in got if first_live is not None and r.delivery_id >= first_live
    ]
    return {
        "backlog": backlog,
        "backlog_seconds": round(backlog_seconds, 2),
        "deliveries_per_s": round(backlog / backlog_seconds, 1) if backlog and backlog_seconds > 0 else None,
        "live": made,
        "lag": _seconds(live),
        "interval_s": settings.delivery.webhook_interval,
        "delivered_once": len({r.delivery_id for r in got}) == len(got) == backlog + made,
    }
