"""Webhooks on the real Postgres, with a real receiver on 127.0.0.1: events written with their
change, signed POSTs, retries through a receiver that is down, order per listing, giving up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text, update

from common.db import Database
from common.moderation.decisions import decide, undo
from common.schema import ReviewLease, Source, WebhookDelivery
from common.settings import Settings
from common.webhooks import LISTING_NEEDS_REVIEW, LISTING_REVIEWED
from common.webhooks.deliveries import counts, deliveries
from common.webhooks.sender import Sender
from common.webhooks.signing import verify
from common.webhooks.subscriptions import WebhookError, add_subscription, set_paused
from tests.fixtures.review import add_flagged
from vitrine.local.receiver import WebhookReceiver


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as made:
        yield made


@pytest.fixture
def hook_settings(settings: Settings, receiver: WebhookReceiver) -> Settings:
    return settings.replace(webhook_private_hosts=[f"127.0.0.1:{receiver.port}"])


@pytest.fixture
def sender(hook_settings: Settings) -> Iterator[Sender]:
    made = Sender(hook_settings)
    yield made
    made.close()


def subscribe(db: Database, settings: Settings, url: str, events: list[str] | None = None) -> str:
    with db.transaction() as session:
        _, secret = add_subscription(session, "default", url, events or [], settings)
    return secret


def review(db: Database, external_id: str, action: str = "accept", moderator: str = "alice") -> None:
    """A moderator claims the item and decides, in one transaction as the review app does."""
    with db.transaction() as session:
        listing_id = session.execute(
            text("SELECT id FROM listing WHERE external_id = :e"), {"e": external_id}
        )
        lease = ReviewLease(
            listing_id=listing_id.scalar_one(),
            moderator=moderator,
            expires_at=datetime.now(UTC) + timedelta(minutes=10),
        )
        session.merge(lease)
        session.flush()
        decide(session, moderator, external_id, action, "Footwear" if action == "override" else None)


def take_back(db: Database, external_id: str, moderator: str = "alice") -> None:
    with db.transaction() as session:
        undo(session, moderator, external_id, 600)


def rows(db: Database) -> list[WebhookDelivery]:
    with db.transaction() as session:
        return list(session.execute(select(WebhookDelivery).order_by(WebhookDelivery.id)).scalars())


def due_now(db: Database) -> None:
    """The backoff's wait, skipped: every pending delivery is due at once."""
    with db.transaction() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.status == "pending")
            .values(next_attempt_at=func.now())
        )


def test_an_event_is_written_with_its_change_and_rolled_back_with_it(
    db: Database, hook_settings: Settings, receiver: WebhookReceiver, clean_db: None
) -> None:
    (listing_id,) = add_flagged(db, [("a-1", 0.4)])
    subscribe(db, hook_settings, receiver.url)
    expires = datetime.now(UTC) + timedelta(minutes=10)
    with pytest.raises(RuntimeError), db.transaction() as session:
        session.merge(ReviewLease(listing_id=listing_id, moderator="alice", expires_at=expires))
        decide(session, "alice", "a-1", "accept")
        assert session.execute(select(func.count()).select_from(WebhookDelivery)).scalar_one() == 1
        raise RuntimeError("the transaction fails after the decision")
    assert rows(db) == []
    review(db, "a-1")
    (row,) = rows(db)
    assert (row.event, row.external_id, row.status, row.attempts) == (LISTING_REVIEWED, "a-1", "pending", 0)
    listing = row.payload["listing"]
    assert listing["status"] == "reviewed" and listing["source"] == "default"
    assert listing["suggestion"]["category"] == "Watches" and listing["suggestion"]["needs_review"] is False
    assert listing["decision"]["action"] == "accept" and listing["decision"]["category"] == "Watches"
    assert "moderator" not in listing["decision"]


def test_only_active_subscriptions_of_the_listing_source_that_want_the_event_get_it(
    db: Database, hook_settings: Settings, receiver: WebhookReceiver, clean_db: None
) -> None:
    add_flagged(db, [("b-1", 0.4), ("b-2", 0.3)])
    with db.transaction() as session:
        session.add(Source(name="other-shop"))
        session.flush()
        add_subscription(session, "other-shop", receiver.url, [], hook_settings)
        failed_only, _ = add_subscription(session, "default", receiver.url, ["failed"], hook_settings)
        paused, _ = add_subscription(session, "default", receiver.url, [], hook_settings)
        wanted, _ = add_subscription(session, "default", receiver.url, ["reviewed"], hook_settings)
        set_paused(session, paused.id, True)
    review(db, "b-1")
    review(db, "b-2", action="skip")  # a skip changes nothing a marketplace sees
    assert [(r.subscription_id, r.external_id, r.event) for r in rows(db)] == [
        (wanted.id, "b-1", LISTING_REVIEWED)
    ]
    assert failed_only.events == ["listing.failed"]


def test_a_private_receiver_is_refused_unless_allowed(
    db: Database, settings: Settings, receiver: WebhookReceiver, clean_db: None
) -> None:
    with pytest.raises(WebhookError, match=r"non-public address 127\.0\.0\.1"), db.transaction() as session:
        add_subscription(session, "default", receiver.url, [], settings)
    with pytest.raises(WebhookError, match="no source"), db.transaction() as session:
        add_subscription(session, "nobody", "https://hooks.example/x", [], settings)


def test_the_receiver_verifies_the_signature_with_the_secret(
    db: Database, hook_settings: Settings, receiver: WebhookReceiver, sender: Sender, clean_db: None
) -> None:
    add_flagged(db, [("c-1", 0.4)])
    secret = subscribe(db, hook_settings, receiver.url)
    review(db, "c-1")
    report = sender.drain(db)
    assert (report.delivered, report.retrying, report.failed) == (1, 0, 0)
    (got,) = receiver.delivered()
    assert got.headers["Vitrine-Event"] == LISTING_REVIEWED
    assert got.headers["Content-Type"] == "application/json"
    assert verify(secret, got.headers["Vitrine-Signature"], got.body)
    assert not verify("whsec_wrong", got.headers["Vitrine-Signature"], got.body)
    (row,) = rows(db)
    assert got.delivery_id == row.id == got.payload["id"]
    assert got.payload["listing"]["external_id"] == "c-1"
    assert (row.status, row.attempts, row.last_status) == ("delivered", 1, 200)
    assert row.delivered_at is not None


def test_a_receiver_down_for_a_while_gets_every_event_once_in_order_per_listing(
    db: Database, hook_settings: Settings, receiver: WebhookReceiver, sender: Sender, clean_db: None
) -> None:
    names = [f"d-{i}" for i in range(6)]
    add_flagged(db, [(name, 0.3) for name in names])
    subscribe(db, hook_settings, receiver.url)
    receiver.status = 500
    for name in names:  # three events each: reviewed, needs_review (undone), reviewed again
        review(db, name)
    first = sender.drain(db)
    # Only each listing's first event is tried while it is pending: the rest wait behind it.
    assert (first.delivered, first.retrying) == (0, len(names))
    for name in names:
        take_back(db, name)
        review(db, name, action="override" if name.endswith(("1", "3")) else "accept")
    due_now(db)
    assert sender.drain(db).retrying == len(names)
    receiver.stop()  # now the port is closed: connections are refused
    due_now(db)
    refused = sender.drain(db)
    assert refused.retrying == len(names) and refused.delivered == 0
    pending = [r for r in rows(db) if r.attempts]
    assert {r.attempts for r in pending} == {3}
    assert all("ConnectError" in (r.last_error or "") for r in pending)
    receiver.start()
    receiver.status = 200
    due_now(db)
    done = sender.drain(db)
    assert (done.delivered, done.retrying, done.failed) == (3 * len(names), 0, 0)
    got = receiver.delivered()
    assert len(got) == 3 * len(names) == len({g.delivery_id for g in got})
    for name in names:
        mine = [g for g in got if g.payload["listing"]["external_id"] == name]
        assert [g.event for g in mine] == [LISTING_REVIEWED, LISTING_NEEDS_REVIEW, LISTING_REVIEWED]
        assert [g.delivery_id for g in mine] == sorted(g.delivery_id for g in mine)
        assert mine[1].payload["listing"]["decision"] is None
    # The log keeps the history: tries, the last answer, the time it was delivered.
    with db.transaction() as session:
        log = deliveries(session, external_id="d-0")
        assert counts(session) == {"pending": 0, "delivered": 18, "failed": 0}
    assert [entry.attempts for entry in reversed(log)] == [4, 1, 1]
    assert all(entry.status == "delivered" and entry.last_status == 200 for entry in log)
    assert sender.drain(db).outcomes == []  # nothing sent twice


def test_a_delivery_is_failed_after_the_retry_window_and_the_next_one_goes(
    db: Database, hook_settings: Settings, receiver: WebhookReceiver, clean_db: None
) -> None:
    short = hook_settings.replace(webhook_retry_for=1.0)
    add_flagged(db, [("e-1", 0.4)])
    subscribe(db, short, receiver.url)
    review(db, "e-1")
    receiver.status = 503
    sender = Sender(short)
    try:
        assert sender.drain(db).retrying == 1
        (first,) = rows(db)
        # Never scheduled past the window: the last try is at its end.
        assert first.next_attempt_at <= first.created_at + timedelta(seconds=1)
        time.sleep(1.1)
        take_back(db, "e-1")  # a second event, inside its own window
        due_now(db)
        report = sender.drain(db)
        # The first gives up; the second, no longer behind a pending one, is tried at once.
        assert (report.failed, report.retrying) == (1, 1)
        receiver.status = 200
        due_now(db)
        assert sender.drain(db).delivered == 1
    finally:
        sender.close()
    first, second = rows(db)
    assert (first.status, first.last_status, first.last_error) == (
        "failed",
        503,
        "HTTP 503: not a 2xx answer",
    )
    assert second.status == "delivered"
    assert [g.event for g in receiver.delivered()] == [LISTING_NEEDS_REVIEW]


def test_a_redirect_is_not_followed_and_a_receiver_turned_private_is_refused(
    db: Database, hook_settings: Settings, receiver: WebhookReceiver, sender: Sender, clean_db: None
) -> None:
    add_flagged(db, [("f-1", 0.4)])
    subscribe(db, hook_settings, receiver.url)
    review(db, "f-1")
    receiver.status = 302
    assert sender.drain(db).retrying == 1
    assert rows(db)[0].last_error == "HTTP 302: redirects are not followed"
    # The guard runs at each try: without the exception the same receiver is now refused.
    strict = Sender(hook_settings.replace(webhook_private_hosts=[]))
    try:
        due_now(db)
        assert strict.drain(db).retrying == 1
    finally:
        strict.close()
    assert "receiver refused" in (rows(db)[0].last_error or "")
    assert len(receiver.received) == 1
