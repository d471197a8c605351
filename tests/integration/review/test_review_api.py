"""`/api/v1/review`: claims in confidence order under leases, decisions, undo, and the audit rows."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from common.db import Database
from common.moderation.labels import label_expression
from common.schema import Listing, ListingStatus, ModeratorDecision, ReviewLease
from tests.fixtures.review import Tokens, add_flagged, bearer


def claim(client: TestClient, token: str, category: str | None = None) -> str | None:
    response = client.post(
        "/api/v1/review/claim", params={"category": category} if category else {}, headers=bearer(token)
    )
    if response.status_code == 204:
        return None
    assert response.status_code == 200, response.text
    return str(response.json()["external_id"])


def decide(client: TestClient, token: str, external_id: str, **body: object) -> tuple[int, dict[str, object]]:
    response = client.post(f"/api/v1/review/{external_id}/decision", json=body, headers=bearer(token))
    return response.status_code, response.json()


def _decisions(db: Database) -> int:
    with db.transaction() as session:
        return session.execute(select(func.count()).select_from(ModeratorDecision)).scalar_one()


def test_claims_come_lowest_confidence_first_and_never_twice(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [("mid", 0.5), ("low", 0.1), ("high", 0.55)])
    add_flagged(db, [("shoe", 0.2)], category="Footwear")
    assert claim(client, tokens.alice) == "low"
    # Claiming again gives back the item already held (a reloaded page keeps its item).
    assert claim(client, tokens.alice) == "low"
    assert claim(client, tokens.bob) == "shoe"
    assert claim(client, tokens.bob, "Watches") == "mid"
    # Listings not flagged, or already decided, never come.
    with db.transaction() as session:
        session.execute(
            update(Listing).where(Listing.external_id == "high").values(status=ListingStatus.reviewed)
        )
    assert claim(client, tokens.alice, "Footwear") is None


def test_an_expired_lease_returns_the_item_to_the_queue(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [("only", 0.2)])
    assert claim(client, tokens.alice) == "only"
    assert claim(client, tokens.bob) is None
    with db.transaction() as session:
        session.execute(update(ReviewLease).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert claim(client, tokens.bob) == "only"
    # Alice's lease has passed to Bob: her decision is refused and changes nothing.
    status, body = decide(client, tokens.alice, "only", action="accept")
    assert status == 409 and "another moderator" in str(body["detail"])
    assert _decisions(db) == 0
    assert decide(client, tokens.bob, "only", action="accept")[0] == 200


def test_two_moderators_racing_never_hold_the_same_item(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [("contested", 0.1)])
    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(lambda token: (token, claim(client, token)), [tokens.alice, tokens.bob] * 4))
    winners = {token for token, item in claimed if item == "contested"}
    assert len(winners) == 1
    loser = tokens.bob if winners == {tokens.alice} else tokens.alice
    assert decide(client, loser, "contested", action="accept")[0] == 409
    assert decide(client, winners.pop(), "contested", action="accept")[0] == 200

    add_flagged(db, [(f"r{i}", 0.2 + i / 100) for i in range(6)])
    with ThreadPoolExecutor(6) as pool:
        claimed = list(pool.map(lambda token: (token, claim(client, token)), [tokens.alice, tokens.bob] * 3))
    alices = {item for token, item in claimed if token == tokens.alice}
    bobs = {item for token, item in claimed if token == tokens.bob}
    assert None not in alices | bobs and not alices & bobs


def test_decisions_undo_and_audit_rows(client: TestClient, tokens: Tokens, db: Database) -> None:
    add_flagged(db, [("a1", 0.1), ("a2", 0.2), ("a3", 0.3)])
    assert claim(client, tokens.alice) == "a1"
    status, body = decide(client, tokens.alice, "a1", action="accept", note="looks right")
    assert status == 200 and body["category"] == "Watches"
    # Decided already: 409, nothing written.
    assert decide(client, tokens.alice, "a1", action="override", category="Footwear")[0] == 409
    assert decide(client, tokens.bob, "a1", action="accept")[0] == 409
    assert claim(client, tokens.alice) == "a2"
    assert decide(client, tokens.alice, "a2", action="override", category="Jewellery")[0] == 200
    assert claim(client, tokens.alice) == "a3"
    assert decide(client, tokens.alice, "a3", action="skip")[0] == 200
    # A skipped item is someone else's: Alice's queue is empty, Bob gets it.
    assert claim(client, tokens.alice) is None
    assert claim(client, tokens.bob) == "a3"
    with db.transaction() as session:
        labels = dict(
            session.execute(select(Listing.external_id, label_expression()).order_by(Listing.id)).all()
        )
        statuses = dict(session.execute(select(Listing.external_id, Listing.status)).all())
    assert labels == {"a1": "Watches", "a2": "Jewellery", "a3": None}
    assert statuses == {"a1": "reviewed", "a2": "reviewed", "a3": "suggested"}

    # Only the moderator's own decision is undone; undoing it returns the item to them.
    assert client.post("/api/v1/review/a2/undo", headers=bearer(tokens.bob)).status_code == 409
    undone = client.post("/api/v1/review/a2/undo", headers=bearer(tokens.alice))
    assert undone.status_code == 200
    assert client.post("/api/v1/review/a2/undo", headers=bearer(tokens.alice)).status_code == 409
    with db.transaction() as session:
        label = session.execute(select(label_expression()).where(Listing.external_id == "a2")).scalar_one()
        status_a2 = session.execute(select(Listing.status).where(Listing.external_id == "a2")).scalar_one()
    assert label is None and status_a2 == "suggested"
    assert claim(client, tokens.alice) == "a2"
    assert decide(client, tokens.alice, "a2", action="accept")[0] == 200

    history = client.get("/api/v1/review/history", headers=bearer(tokens.alice)).json()["decisions"]
    assert [(d["external_id"], d["action"]) for d in history] == [
        ("a2", "accept"),
        ("a2", "undo"),
        ("a3", "skip"),
        ("a2", "override"),
        ("a1", "accept"),
    ]
    override = history[3]
    assert (override["from"], override["to"], override["moderator"]) == ("Watches", "Jewellery", "alice")
    assert override["reverted_by"] == history[1]["id"] and history[1]["reverts"] == override["id"]
    assert override["confidence"] == 0.2 and override["clustering_version"] is not None
    assert history[4]["note"] == "looks right"
    only_bob = client.get("/api/v1/review/history?moderator=bob", headers=bearer(tokens.alice)).json()
    assert only_bob["decisions"] == []
    jewellery = client.get("/api/v1/review/history?category=Jewellery", headers=bearer(tokens.alice)).json()
    assert {d["id"] for d in jewellery["decisions"]} == {override["id"], history[1]["id"]}
    # The model's suggestion stays beside the decision.
    listing = client.get("/api/v1/listings/a2", headers=bearer(tokens.ingest)).json()
    assert listing["suggestion"]["category"] == "Watches" and listing["decision"]["action"] == "accept"


def test_bad_decisions_are_refused_and_write_nothing(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [("b1", 0.1)])
    assert claim(client, tokens.alice) == "b1"
    cases = [
        ({"action": "override", "category": "Spaceships"}, 422, "category"),
        ({"action": "override"}, 422, "category"),
        ({"action": "accept", "note": "x" * 2001}, 422, "note"),
        ({"action": "approve"}, 422, "action"),
        ({"action": "accept", "colour": "red"}, 422, "colour"),
    ]
    for body, status, field in cases:
        got, answer = decide(client, tokens.alice, "b1", **body)
        assert got == status and field in str(answer["detail"]), (body, answer)
    response = client.post(
        "/api/v1/review/b1/decision",
        content=b"{not json",
        headers={**bearer(tokens.alice), "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["code"] == "malformed_json"
    assert decide(client, tokens.alice, "unknown-id", action="accept")[0] == 404
    assert client.post("/api/v1/review/unknown-id/undo", headers=bearer(tokens.alice)).status_code == 404
    assert _decisions(db) == 0
    assert decide(client, tokens.alice, "b1", action="override", category="Footwear")[0] == 200


def test_stats_count_waiting_items_and_labels(client: TestClient, tokens: Tokens, db: Database) -> None:
    add_flagged(db, [("s1", 0.1), ("s2", 0.2)], seller_category="Watches")
    add_flagged(
        db, [("s3", 0.9)], category="Footwear", reason="seller_disagrees", seller_category="Jewellery"
    )
    claim(client, tokens.alice)
    decide(client, tokens.alice, "s1", action="accept")
    stats = client.get("/api/v1/stats", headers=bearer(tokens.bob)).json()
    assert stats["waiting"]["per_reason"] == {"low_confidence": 1, "seller_disagrees": 1}
    assert stats["waiting"]["per_category"] == {"Watches": 1, "Footwear": 1}
    assert stats["labels"] == {"moderators": 1, "sellers": 2}
    assert stats["clustering_versions"][0]["ari"] == 0.5
    assert stats["current_clusters"][0] == {"cluster": 0, "size": 10, "category": "Watches"}
    assert set(stats["queue_depths"]) == {"embed", "explain", "refit", "webhooks"}
    assert sum(h["count"] for h in stats["decisions_per_hour"]) == 1
