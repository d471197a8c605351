"""The delivery log: what was sent to whom, how it went, and what is still to be tried."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.schema import Source, WebhookDelivery, WebhookSubscription

STATUSES = ("pending", "delivered", "failed")
MAX_LIMIT = 1000


@dataclass(frozen=True)
class LoggedDelivery:
    id: int
    subscription_id: int
    source: str
    url: str
    external_id: str
    event: str
    status: str
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime | None  # None once delivered or failed
    delivered_at: datetime | None


def deliveries(
    session: Session,
    *,
    source_id: int | None = None,
    subscription_id: int | None = None,
    status: str | None = None,
    external_id: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[LoggedDelivery]:
    """The newest deliveries first; `before_id` pages back from there."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status: one of {', '.join(STATUSES)}")
    query = (
        select(WebhookDelivery, WebhookSubscription.url, Source.name)
        .join(WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id)
        .join(Source, Source.id == WebhookSubscription.source_id)
    )
    if source_id is not None:
        query = query.where(WebhookSubscription.source_id == source_id)
    if subscription_id is not None:
        query = query.where(WebhookDelivery.subscription_id == subscription_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if external_id is not None:
        query = query.where(WebhookDelivery.external_id == external_id)
    if before_id is not None:
        query = query.where(WebhookDelivery.id < before_id)
    rows = session.execute(
        query.order_by(WebhookDelivery.id.desc()).limit(max(1, min(limit, MAX_LIMIT)))
    ).all()
    return [
        LoggedDelivery(
            id=d.id,
            subscription_id=d.subscription_id,
            source=name,
            url=url,
            external_id=d.external_id,
            event=d.event,
            status=d.status,
            attempts=d.attempts,
            last_status=d.last_status,
            last_error=d.last_error,
            created_at=d.created_at,
            next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
            delivered_at=d.delivered_at,
        )
        for d, url, name in rows
    ]


def counts(session: Session, source_id: int | None = None) -> dict[str, int]:
    """Deliveries by status (every status named, zero included)."""
    query = select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
    if source_id is not None:
        query = query.join(
            WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id
        ).where(WebhookSubscription.source_id == source_id)
    found = {status: int(n) for status, n in session.execute(query).all()}
    return {status: found.get(status, 0) for status in STATUSES}
