"""A source's webhook subscriptions: added (the secret shown once), listed, paused, removed.

A receiver's URL goes through the SSRF guard of photos when it is added and again before each
delivery (`check_receiver`): a name that resolved to a public address then may not now.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from common.photos.failures import ImageRejected
from common.photos.urls import Approved, approve_target
from common.schema import Source, WebhookSubscription
from common.settings import Settings
from common.sources.registry import SourceError, source_named
from common.webhooks import EVENTS
from common.webhooks.signing import new_secret

MAX_URL = 2000
MAX_SUBSCRIPTIONS_PER_SOURCE = 20


class WebhookError(ValueError):
    """A subscription request that cannot be done; the message says why."""


@dataclass(frozen=True)
class Subscription:
    """A subscription as an operator sees it (never its secret), with its source's name."""

    id: int
    source: str
    url: str
    events: list[str]
    created_at: str
    paused: bool


def event_names(names: Iterable[str]) -> list[str]:
    """`suggested`, `needs_review`, ... or their wire names `listing.suggested`, ...; all when empty."""
    wanted: list[str] = []
    for raw in names:
        name = raw.strip().replace("-", "_")
        if not name:
            continue
        full = name if name.startswith("listing.") else f"listing.{name}"
        if full not in EVENTS:
            known = ", ".join(event.removeprefix("listing.") for event in EVENTS)
            raise WebhookError(f"unknown event {raw!r}: one of {known}")
        if full not in wanted:
            wanted.append(full)
    return wanted or list(EVENTS)


def check_receiver(url: str, settings: Settings) -> Approved:
    """The address a delivery to `url` may connect to; `WebhookError` when the guard refuses it.

    Photos' host allow-list is for image hosts, not receivers: only the private-address rule
    applies, with the webhooks' own exceptions (VITRINE_WEBHOOK_PRIVATE_HOSTS).
    """
    if len(url) > MAX_URL:
        raise WebhookError(f"URL longer than {MAX_URL} characters")
    try:
        return approve_target(url, allowed_hosts=[], private_hosts=settings.delivery.webhook_private_hosts)
    except ImageRejected as error:
        raise WebhookError(f"receiver refused: {error.detail}") from None


def add_subscription(
    session: Session, source: str, url: str, events: Iterable[str], settings: Settings
) -> tuple[WebhookSubscription, str]:
    """A new subscription of `source` and its secret (returned once; the caller shows it)."""
    try:
        owner = source_named(session, source)
    except SourceError as error:
        raise WebhookError(str(error)) from None
    wanted = event_names(events)
    check_receiver(url, settings)
    count = session.execute(
        select(func.count())
        .select_from(WebhookSubscription)
        .where(WebhookSubscription.source_id == owner.id, WebhookSubscription.disabled_at.is_(None))
    ).scalar_one()
    if count >= MAX_SUBSCRIPTIONS_PER_SOURCE:
        # Each one multiplies every event's rows: a bound keeps one source from flooding the outbox.
        raise WebhookError(f"source {source!r} has {count} active subscriptions already (at most 20)")
    secret = new_secret()
    subscription = WebhookSubscription(source_id=owner.id, url=url, secret=secret, events=wanted)
    session.add(subscription)
    session.flush()
    return subscription, secret


def list_subscriptions(session: Session, source_id: int | None = None) -> list[Subscription]:
    query = select(WebhookSubscription, Source.name).join(Source, Source.id == WebhookSubscription.source_id)
    if source_id is not None:
        query = query.where(WebhookSubscription.source_id == source_id)
    return [
        Subscription(
            id=row.id,
            source=name,
            url=row.url,
            events=list(row.events),
            created_at=row.created_at.isoformat(timespec="seconds"),
            paused=row.disabled_at is not None,
        )
        for row, name in session.execute(query.order_by(WebhookSubscription.id)).all()
    ]


def set_paused(session: Session, subscription_id: int, paused: bool) -> None:
    """A paused subscription records nothing new; what it has pending waits until it resumes."""
    done = session.execute(
        update(WebhookSubscription)
        .where(WebhookSubscription.id == subscription_id)
        .values(disabled_at=func.now() if paused else None)
    )
    if done.rowcount == 0:  # type: ignore[attr-defined]
        raise WebhookError(f"no subscription {subscription_id}")


def remove_subscription(session: Session, subscription_id: int) -> None:
    """Gone with its delivery log (the rows cascade)."""
    done = session.execute(delete(WebhookSubscription).where(WebhookSubscription.id == subscription_id))
    if done.rowcount == 0:  # type: ignore[attr-defined]
        raise WebhookError(f"no subscription {subscription_id}")
