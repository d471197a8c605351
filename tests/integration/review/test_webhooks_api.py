"""`GET /api/v1/webhooks/deliveries`: a source's own delivery log, for its ingest tokens only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from common.db import Database
from common.moderation.accounts import add_token
from common.moderation.decisions import decide
from common.schema import ReviewLease, Source
from common.settings import Settings
from common.webhooks.subscriptions import add_subscription
from tests.fixtures.review import Tokens, add_flagged, bearer


def test_an_ingest_token_reads_its_own_source_deliveries_only(
    client: TestClient, db: Database, tokens: Tokens, settings: Settings
) -> None:
    allowed = settings.replace(webhook_private_hosts=["127.0.0.1:9"])
    ids = add_flagged(db, [(f"h-{i}", 0.4) for i in range(3)])
    with db.transaction() as session:
        session.add(Source(name="other-shop"))
        session.flush()
        other = add_token(session, "other", "ingest", None, "other-shop")
        add_subscription(session, "default", "http://127.0.0.1:9/hook", ["reviewed"], allowed)
        add_subscription(session, "other-shop", "http://127.0.0.1:9/other", [], allowed)
        for i, listing_id in enumerate(ids):
            expires = datetime.now(UTC) + timedelta(minutes=5)
            session.add(ReviewLease(listing_id=listing_id, moderator="alice", expires_at=expires))
            session.flush()
            decide(session, "alice", f"h-{i}", "accept")

    first = client.get("/api/v1/webhooks/deliveries?limit=2", headers=bearer(tokens.ingest))
    assert first.status_code == 200, first.text
    page = first.json()
    assert [d["external_id"] for d in page["deliveries"]] == ["h-2", "h-1"]
    assert all(d["status"] == "pending" and d["attempts"] == 0 for d in page["deliveries"])
    assert page["deliveries"][0]["event"] == "listing.reviewed" and page["next"] is not None
    rest = client.get(f"/api/v1/webhooks/deliveries?before={page['next']}", headers=bearer(tokens.ingest))
    assert [d["external_id"] for d in rest.json()["deliveries"]] == ["h-0"] and rest.json()["next"] is None
    delivered = client.get("/api/v1/webhooks/deliveries?status=delivered", headers=bearer(tokens.ingest))
    assert delivered.json()["deliveries"] == []

    # Another source's token sees nothing of these; a moderator's token is refused.
    theirs = client.get("/api/v1/webhooks/deliveries", headers=bearer(other))
    assert theirs.status_code == 200 and theirs.json() == {"deliveries": [], "next": None}
    assert client.get("/api/v1/webhooks/deliveries", headers=bearer(tokens.alice)).status_code == 403
    assert client.get("/api/v1/webhooks/deliveries").status_code == 401
    bad = client.get("/api/v1/webhooks/deliveries?status=lost", headers=bearer(tokens.ingest))
    assert bad.status_code == 422
