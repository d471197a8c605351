"""A new photo makes a new revision: a claim or decision on the old photo no longer counts."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from common.db import Database
from common.jobs.claims import split_suspects
from common.listings.events import ListingEvent, record_listing
from common.moderation.labels import label_expression
from common.schema import Listing, ListingStatus, ModeratorDecision, Suggestion
from tests.fixtures.review import Tokens, add_flagged, bearer


def _repost(db: Database, external_id: str) -> None:
    """The seller posts the listing again with another photo."""
    event = ListingEvent(external_id=external_id, image_url=f"https://photos.example/{external_id}-new.jpg")
    with db.transaction() as session:
        assert record_listing(session, event).outcome == "requeued"


def _listing(db: Database, external_id: str) -> tuple[Listing, Suggestion | None, str | None]:
    with db.transaction() as session:
        listing = session.execute(select(Listing).where(Listing.external_id == external_id)).scalar_one()
        suggestion = session.execute(
            select(Suggestion).where(Suggestion.listing_id == listing.id)
        ).scalar_one_or_none()
        label = session.execute(select(label_expression()).where(Listing.id == listing.id)).scalar_one()
        session.expunge_all()
        return listing, suggestion, label


def _decisions(db: Database) -> int:
    with db.transaction() as session:
        return session.execute(select(func.count()).select_from(ModeratorDecision)).scalar_one()


def _claim(client: TestClient, token: str) -> str:
    response = client.post("/api/v1/review/claim", headers=bearer(token))
    assert response.status_code == 200, response.text
    return str(response.json()["external_id"])


def test_a_decision_on_a_photo_replaced_while_claimed_is_refused(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [("swap", 0.4)])
    assert _claim(client, tokens.alice) == "swap"
    _repost(db, "swap")

    response = client.post(
        "/api/v1/review/swap/decision", json={"action": "accept"}, headers=bearer(tokens.alice)
    )
    assert response.status_code == 409, response.text
    assert "new photo" in response.text
    assert _decisions(db) == 0
    listing, suggestion, _ = _listing(db, "swap")
    # The new photo waits for its embedding; the old suggestion waits for no one.
    assert listing.status == ListingStatus.queued
    assert suggestion is not None and not suggestion.needs_review
    assert split_suspects(db, [listing.id]) == ([listing.id], [])


def test_a_decision_under_a_claim_of_the_old_photo_is_refused_once_the_new_one_is_scored(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [("swap", 0.4)])
    assert _claim(client, tokens.alice) == "swap"
    _repost(db, "swap")
    # The new photo is embedded and flagged in its turn (as the embed worker writes it).
    with db.transaction() as session:
        listing = session.execute(select(Listing).where(Listing.external_id == "swap")).scalar_one()
        listing.status = ListingStatus.suggested
        session.execute(
            update(Suggestion)
            .where(Suggestion.listing_id == listing.id)
            .values(revision=listing.revision, needs_review=True)
        )

    response = client.post(
        "/api/v1/review/swap/decision", json={"action": "accept"}, headers=bearer(tokens.alice)
    )
    assert response.status_code == 409, response.text
    assert "new photo" in response.text
    assert _decisions(db) == 0
    # Claimed again, the new photo is alice's to decide.
    assert _claim(client, tokens.alice) == "swap"
    response = client.post(
        "/api/v1/review/swap/decision", json={"action": "accept"}, headers=bearer(tokens.alice)
    )
    assert response.status_code == 200, response.text


def test_a_new_photo_ends_the_old_decision(client: TestClient, tokens: Tokens, db: Database) -> None:
    add_flagged(db, [("swap", 0.4)], seller_category="Footwear")
    assert _claim(client, tokens.alice) == "swap"
    response = client.post(
        "/api/v1/review/swap/decision", json={"action": "accept"}, headers=bearer(tokens.alice)
    )
    assert response.status_code == 200, response.text
    assert _listing(db, "swap")[2] == "Watches"

    _repost(db, "swap")
    listing, _, label = _listing(db, "swap")
    # The accepted photo is gone: the listing is labelled by its seller again, and scored anew.
    assert label == "Footwear"
    assert listing.status == ListingStatus.queued


def test_an_undo_after_a_new_photo_leaves_the_new_photo_its_work(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [("swap", 0.4)])
    assert _claim(client, tokens.alice) == "swap"
    response = client.post(
        "/api/v1/review/swap/decision", json={"action": "accept"}, headers=bearer(tokens.alice)
    )
    assert response.status_code == 200, response.text
    _repost(db, "swap")

    undone = client.post("/api/v1/review/swap/undo", headers=bearer(tokens.alice))
    assert undone.status_code == 409, undone.text
    assert "new photo" in undone.text
    listing, suggestion, _ = _listing(db, "swap")
    # Still queued: the embed worker takes its message, nothing waits on the old photo's suggestion.
    assert listing.status == ListingStatus.queued
    assert suggestion is not None and not suggestion.needs_review
    assert split_suspects(db, [listing.id]) == ([listing.id], [])
    # Nor is the item handed to a moderator before its new photo is scored.
    assert client.post("/api/v1/review/claim", headers=bearer(tokens.bob)).status_code == 204
