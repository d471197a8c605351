"""Where listing events come from: a refit's suggestions (only where the outcome changed), the
embed step's failures, and the cost of all that when nobody subscribed."""

from __future__ import annotations

from sqlalchemy import select

from common.db import Database
from common.jobs.embed import EmbedPipeline
from common.jobs.refit import refit
from common.object_store import ObjectStore
from common.schema import Listing, ListingStatus, Suggestion, WebhookDelivery
from common.settings import Settings
from common.vision.backbone import Backbone
from common.webhooks import LISTING_FAILED, LISTING_NEEDS_REVIEW, LISTING_SUGGESTED
from common.webhooks.subscriptions import add_subscription
from tests.integration.common.jobs.test_refit import blobs, insert_rows


def subscribe(db: Database, settings: Settings, events: list[str] | None = None) -> None:
    allowed = settings.replace(webhook_private_hosts=["127.0.0.1:9"])
    with db.transaction() as session:
        add_subscription(session, "default", "http://127.0.0.1:9/hook", events or [], allowed)


def events(db: Database) -> list[tuple[int, str]]:
    with db.transaction() as session:
        return [
            (row.listing_id, row.event)
            for row in session.execute(select(WebhookDelivery).order_by(WebhookDelivery.id)).scalars()
        ]


def outcomes(db: Database) -> dict[int, tuple[str | None, bool]]:
    with db.transaction() as session:
        return {
            s.listing_id: (s.category, s.needs_review) for s in session.execute(select(Suggestion)).scalars()
        }


def test_a_refit_sends_an_event_only_where_a_listing_outcome_changed(
    db: Database, settings: Settings, clean_db: None
) -> None:
    subscribe(db, settings)
    vectors, truth = blobs(30)
    ids = insert_rows(db, vectors, truth)
    assert refit(db, settings).version_id is not None
    first = outcomes(db)
    expected = [(i, LISTING_NEEDS_REVIEW if first[i][1] else LISTING_SUGGESTED) for i in sorted(ids)]
    assert sorted(events(db)) == expected
    with db.transaction() as session:
        payload = session.execute(select(WebhookDelivery.payload).limit(1)).scalar_one()["listing"]
    assert payload["status"] == "suggested" and payload["suggestion"]["category"] in truth

    # The same corpus again: the same outcomes, so not one event more.
    assert refit(db, settings).version_id is not None
    second = outcomes(db)
    changed = sorted(i for i in ids if second[i] != first[i])
    assert len(events(db)) == len(ids) + len(changed)

    # Every suggestion flagged now: an event for each listing whose flag this turned, none other.
    flag_all = settings.replace(confidence_threshold=1.0)
    assert refit(db, flag_all).version_id is not None
    third = outcomes(db)
    turned = sorted(i for i in ids if third[i] != second[i])
    assert turned and all(third[i][1] for i in ids)
    assert events(db)[len(ids) + len(changed) :] == [(i, LISTING_NEEDS_REVIEW) for i in turned]


def test_nothing_is_recorded_without_a_subscription_that_wants_it(
    db: Database, settings: Settings, clean_db: None
) -> None:
    subscribe(db, settings, ["failed"])
    vectors, truth = blobs(10)
    insert_rows(db, vectors, truth)
    assert refit(db, settings).version_id is not None
    assert events(db) == []


def test_a_listing_that_fails_sends_its_failure(
    db: Database, settings: Settings, store: ObjectStore, lite0: Backbone, clean_db: None
) -> None:
    subscribe(db, settings, ["failed", "suggested"])
    with db.transaction() as session:
        listing = Listing(
            external_id="bad-1", image_url="http://127.0.0.1:9/photo.jpg", status=ListingStatus.queued
        )
        session.add(listing)
        session.flush()
        listing_id = listing.id
    report = EmbedPipeline(settings, db, lite0, store).run([listing_id])
    assert report.failed == {listing_id: "private_address"}
    assert events(db) == [(listing_id, LISTING_FAILED)]
    with db.transaction() as session:
        payload = session.execute(select(WebhookDelivery.payload)).scalar_one()["listing"]
    assert payload["status"] == "failed" and payload["failure_reason"] == "private_address"
    assert payload["suggestion"] is None and payload["decision"] is None
