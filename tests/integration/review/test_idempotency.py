"""`Idempotency-Key` on ingest and decisions: a retry gets the first answer, not a second effect;
a retried decision without a key is told apart from someone else's."""

from __future__ import annotations

import redis
from fastapi.testclient import TestClient

from common.db import Database
from common.delivery.queues import EMBED_QUEUE
from common.settings import Settings
from tests.fixtures.review import Tokens, add_flagged, bearer
from tests.integration.review.test_problems import problem


def test_a_retried_ingest_gets_the_first_answer_and_sends_nothing_again(
    client: TestClient, tokens: Tokens, settings: Settings
) -> None:
    shop = {**bearer(tokens.ingest), "Idempotency-Key": "order-42"}
    item = [{"external_id": "sku-1", "image_url": "https://photos.example/1.jpg"}]
    first = client.post("/api/v1/listings", json=item, headers=shop)
    again = client.post("/api/v1/listings", json=item, headers=shop)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and first.json()["results"][0]["outcome"] == "created"
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert redis.Redis.from_url(settings.services.broker_url).llen(EMBED_QUEUE) == 1
    # Without the key the same body is a new request (and answered `unchanged`).
    plain = client.post("/api/v1/listings", json=item, headers=bearer(tokens.ingest))
    assert plain.json()["results"][0]["outcome"] == "unchanged"
    # The same key with another body is a client's mistake, said so.
    other = [{"external_id": "sku-2", "image_url": "https://photos.example/2.jpg"}]
    problem(client.post("/api/v1/listings", json=other, headers=shop), 422, "idempotency_key_reused")
    # Another caller's key of the same name is its own.
    theirs = client.post(
        "/api/v1/listings", json=other, headers={**bearer(tokens.alice), "Idempotency-Key": "order-42"}
    )
    assert theirs.status_code == 403  # and a review token may not ingest at all: nothing replayed
    bad = client.post(
        "/api/v1/listings", json=item, headers={**bearer(tokens.ingest), "Idempotency-Key": "has spaces"}
    )
    problem(bad, 400, "invalid_idempotency_key")


def test_a_retried_decision_gets_the_first_answer(client: TestClient, tokens: Tokens, db: Database) -> None:
    alice, bob = bearer(tokens.alice), bearer(tokens.bob)
    add_flagged(db, [("b1", 0.4), ("b2", 0.45)])
    assert client.post("/api/v1/review/claim", headers=alice).json()["external_id"] == "b1"
    keyed = {**alice, "Idempotency-Key": "decide-b1"}
    first = client.post("/api/v1/review/b1/decision", json={"action": "accept"}, headers=keyed)
    again = client.post("/api/v1/review/b1/decision", json={"action": "accept"}, headers=keyed)
    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    # Without a key, a retry is told apart from a decision someone else made.
    mine = client.post("/api/v1/review/b1/decision", json={"action": "accept"}, headers=alice)
    assert problem(mine, 409, "already_decided_by_you")["errors"][0]["pointer"] == "/external_id"
    theirs = client.post("/api/v1/review/b1/decision", json={"action": "accept"}, headers=bob)
    problem(theirs, 409, "already_decided")
    problem(
        client.post("/api/v1/review/b2/decision", json={"action": "accept"}, headers=bob),
        409,
        "not_claimed_by_you",
    )
