"""Posting due deliveries: claimed from Postgres, signed, sent, and their outcome written back.

- A claim is a short transaction (`FOR UPDATE SKIP LOCKED`, so senders never wait on each
  other) that leases each delivery (`next_attempt_at` moved past the POST's deadline) before any
  request is made: no transaction stays open across a POST, and a sender that dies mid-POST
  leaves the delivery to be claimed again when its lease ends (at least once, never lost).
- Only the head of each (subscription, listing) chain is claimed: a delivery waits while an
  earlier one for the same listing is still pending, so a receiver sees a listing's events in
  the order they happened, even when the first needed retries.
- 2xx is delivered. Anything else (an error status, a redirect, which is never followed, a
  refused or unanswered connection, a receiver the SSRF guard now refuses) is tried again after
  `signing.backoff`, until VITRINE_WEBHOOK_RETRY_FOR after the event; then it is `failed`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import text

from common.db import Database
from common.photos.transport import PhotoClient
from common.settings import Settings
from common.webhooks.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, backoff, signature_header
from common.webhooks.subscriptions import WebhookError, check_receiver

log = logging.getLogger(__name__)

# Deliveries claimed per round trip, and POSTs in flight at once (each to another listing).
CLAIM_BATCH = 100
SEND_THREADS = 16
# A claimed delivery is the sender's for the POST's deadline plus this margin.
LEASE_MARGIN = 30.0
USER_AGENT = "Vitrine-Webhooks/1"

_CLAIM = text("""
WITH due AS (
    SELECT d.id FROM webhook_delivery d
    JOIN webhook_subscription w ON w.id = d.subscription_id AND w.disabled_at IS NULL
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
      AND NOT EXISTS (
          SELECT 1 FROM webhook_delivery e
          WHERE e.status = 'pending' AND e.subscription_id = d.subscription_id
            AND e.listing_id = d.listing_id AND e.id < d.id)
    ORDER BY d.next_attempt_at, d.id
    LIMIT :limit
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_delivery d
SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => :lease)
FROM due, webhook_subscription w
WHERE d.id = due.id AND w.id = d.subscription_id
RETURNING d.id, w.url, w.secret, d.event, d.payload, d.attempts, d.created_at
""")

# Written only while the delivery is still this sender's (same try): a sender whose lease ran
# out leaves the outcome to the one that claimed it since.
_DELIVERED = text("""
UPDATE webhook_delivery
SET status = 'delivered', delivered_at = now(), last_status = :status, last_error = NULL
WHERE id = :id AND status = 'pending' AND attempts = :attempts
""")
_FAILED_TRY = text("""
UPDATE webhook_delivery
SET last_status = :status, last_error = :error,
    status = CASE WHEN now() >= created_at + make_interval(secs => :retry_for) THEN 'failed'
                  ELSE 'pending' END,
    next_attempt_at = LEAST(now() + make_interval(secs => :delay),
                            created_at + make_interval(secs => :retry_for))
WHERE id = :id AND status = 'pending' AND attempts = :attempts
""")


@dataclass(frozen=True)
class Claimed:
    id: int
    url: str
    secret: str
    event: str
    payload: dict[str, Any]
    attempts: int  # including this one
    created_at: datetime


@dataclass(frozen=True)
class Outcome:
    delivery: Claimed
    status: int | None  # the receiver's HTTP status, None when it never answered
    error: str | None  # None: delivered

    @property
    def delivered(self) -> bool:
        return self.error is None


@dataclass
class SendReport:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    seconds: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list, repr=False)

    def add(self, other: SendReport) -> None:
        self.delivered += other.delivered
        self.retrying += other.retrying
        self.failed += other.failed
        self.outcomes += other.outcomes


def body_of(delivery: Claimed) -> bytes:
    """The bytes posted and signed; the same for every try of a delivery."""
    return json.dumps(
        {"id": delivery.id, "event": delivery.event, **delivery.payload}, separators=(",", ":")
    ).encode()


class Sender:
    """What a webhooks worker keeps: an HTTP client pinned to checked addresses, and its threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Connects only to the address the guard approved for this try (no DNS rebinding).
        self.http = PhotoClient(timeout=settings.delivery.webhook_timeout)
        self.pool = ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="webhook")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.http.close()

    def post(self, delivery: Claimed) -> Outcome:
        try:
            approved = check_receiver(delivery.url, self.settings)
        except WebhookError as error:
            return Outcome(delivery, None, str(error))
        body = body_of(delivery)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_HEADER: delivery.event,
            DELIVERY_HEADER: str(delivery.id),
            SIGNATURE_HEADER: signature_header(delivery.secret, body),
        }
        try:
            self.http.pin(approved.host, approved.port, approved.address)
            # The answer's body is never read: a receiver owes us a status, nothing more.
            with self.http.stream("POST", delivery.url, content=body, headers=headers) as response:
                status = response.status_code
        except httpx.HTTPError as error:
            return Outcome(delivery, None, f"{type(error).__name__}: {error}"[:500])
        if 200 <= status < 300:
            return Outcome(delivery, status, None)
        why = "redirects are not followed" if 300 <= status < 400 else "not a 2xx answer"
        return Outcome(delivery, status, f"HTTP {status}: {why}")

    def send_due(self, db: Database, limit: int = CLAIM_BATCH) -> SendReport:
        """Claim up to `limit` due deliveries, post them side by side, record each outcome."""
        claimed = claim(db, limit, self.settings.delivery.webhook_timeout + LEASE_MARGIN)
        if not claimed:
            return SendReport()
        outcomes = list(self.pool.map(self.post, claimed))
        return record(db, outcomes, self.settings)

    def drain(self, db: Database, budget: float = 60.0) -> SendReport:
        """`send_due` until nothing is due (a chain's next event is due once its head is done)."""
        started = time.monotonic()
        report = SendReport()
        while time.monotonic() - started < budget:
            step = self.send_due(db)
            if not step.outcomes:
                break
            report.add(step)
        report.seconds = time.monotonic() - started
        return report


def claim(db: Database, limit: int, lease: float) -> list[Claimed]:
    with db.transaction() as session:
        rows = session.execute(_CLAIM, {"limit": limit, "lease": lease}).all()
    return sorted((Claimed(*row) for row in rows), key=lambda c: c.id)


def record(db: Database, outcomes: Sequence[Outcome], settings: Settings) -> SendReport:
    report = SendReport(outcomes=list(outcomes))
    retry_for = settings.delivery.webhook_retry_for
    with db.transaction() as session:
        for outcome in outcomes:
            delivery = outcome.delivery
            key = {"id": delivery.id, "attempts": delivery.attempts, "status": outcome.status}
            if outcome.delivered:
                session.execute(_DELIVERED, key)
                report.delivered += 1
                continue
            delay = backoff(delivery.attempts)
            session.execute(
                _FAILED_TRY, {**key, "error": outcome.error, "delay": delay, "retry_for": retry_for}
            )
            report.retrying += 1
        # Which of the failed tries closed their window: one read, not one per row.
        failed_ids = [o.delivery.id for o in outcomes if not o.delivered]
        if failed_ids:
            report.failed = int(
                session.execute(
                    text("SELECT count(*) FROM webhook_delivery WHERE id = ANY (:ids) AND status = 'failed'"),
                    {"ids": failed_ids},
                ).scalar_one()
            )
            report.retrying -= report.failed
    for outcome in outcomes:
        if not outcome.delivered:
            log.info(
                "webhook delivery %d (%s) try %d: %s",
                outcome.delivery.id,
                outcome.delivery.event,
                outcome.delivery.attempts,
                outcome.error,
            )
    return report
