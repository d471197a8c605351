"""`GET /api/v1/listings`: every listing a page at a time, in the order they last changed, filtered
by status, review and time, with a cursor that a marketplace keeps to ask later what changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update

from common.db import Database
from common.listings.events import publish_listing
from common.runtime import Runtime
from common.schema import Listing, ListingStatus
from tests.fixtures.review import Tokens, add_flagged, bearer
from tests.integration.review.test_problems import problem


def _all_pages(
    client: TestClient, headers: dict[str, str], query: str = "", limit: int = 2
) -> tuple[list[str], str | None]:
    seen: list[str] = []
    cursor: str | None = None
    last: str | None = None
    while True:
        url = f"/api/v1/listings?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=headers).json()
        seen += [listing["external_id"] for listing in page["listings"]]
        assert page["has_more"] == (page["next"] is not None)
        last = page["next"] or last
        if not page["has_more"]:
            return seen, last or cursor
        cursor = page["next"]


def test_pages_cover_every_listing_once_and_the_cursor_finds_what_changed(
    client: TestClient, tokens: Tokens, runtime: Runtime, db: Database
) -> None:
    shop = bearer(tokens.ingest)
    ids = [
        publish_listing(runtime, f"sku-{i}", f"https://photos.example/{i}.jpg").listing_id for i in range(5)
    ]
    # Distinct change times, oldest first, so the order is known.
    start = datetime.now(UTC) - timedelta(hours=1)
    with db.transaction() as session:
        for offset, listing_id in enumerate(ids):
            session.execute(
                update(Listing)
                .where(Listing.id == listing_id)
                .values(updated_at=start + timedelta(minutes=offset))
            )
    seen, _ = _all_pages(client, shop)
    assert seen == [f"sku-{i}" for i in range(5)]

    # Kept from the last page, the cursor brings back only what changed after it.
    first = client.get("/api/v1/listings?limit=5", headers=shop).json()
    assert first["has_more"] is False and first["next"] is None
    three = client.get("/api/v1/listings?limit=3", headers=shop).json()
    with db.transaction() as session:
        session.execute(
            update(Listing)
            .where(Listing.id == ids[0])
            .values(status=ListingStatus.failed, updated_at=datetime.now(UTC))
        )
    after = client.get(f"/api/v1/listings?cursor={three['next']}", headers=shop).json()
    assert [listing["external_id"] for listing in after["listings"]] == ["sku-3", "sku-4", "sku-0"]

    # Filters.
    failed = client.get("/api/v1/listings?status=failed", headers=shop).json()["listings"]
    assert [listing["external_id"] for listing in failed] == ["sku-0"]
    since = (start + timedelta(minutes=3, seconds=30)).isoformat()
    recent = client.get("/api/v1/listings", params={"updated_since": since}, headers=shop).json()["listings"]
    assert [listing["external_id"] for listing in recent] == ["sku-4", "sku-0"]


def test_the_review_filter_and_bad_queries(client: TestClient, tokens: Tokens, db: Database) -> None:
    shop = bearer(tokens.ingest)
    add_flagged(db, [("b1", 0.4), ("b2", 0.5)])
    flagged = client.get("/api/v1/listings?needs_review=true", headers=shop).json()["listings"]
    assert sorted(listing["external_id"] for listing in flagged) == ["b1", "b2"]
    assert all(listing["suggestion"]["needs_review"] for listing in flagged)
    assert client.get("/api/v1/listings?needs_review=false", headers=shop).json()["listings"] == []
    problem(client.get("/api/v1/listings?cursor=bm90IGEgY3Vyc29y", headers=shop), 422, "invalid_cursor")
    problem(client.get("/api/v1/listings?status=lost", headers=shop), 422, "invalid")
    problem(client.get("/api/v1/listings?limit=501", headers=shop), 422, "invalid")
    problem(client.get("/api/v1/listings"), 401, "unauthorized")


def test_history_pages_with_next_and_has_more(client: TestClient, tokens: Tokens, db: Database) -> None:
    alice = bearer(tokens.alice)
    add_flagged(db, [(f"h{i}", 0.4) for i in range(3)])
    for _ in range(3):
        claimed = client.post("/api/v1/review/claim", headers=alice).json()["external_id"]
        decided = client.post(f"/api/v1/review/{claimed}/decision", json={"action": "accept"}, headers=alice)
        assert decided.status_code == 200
    first = client.get("/api/v1/review/history?limit=2", headers=alice).json()
    assert len(first["decisions"]) == 2 and first["has_more"] is True
    rest = client.get(f"/api/v1/review/history?limit=2&before={first['next']}", headers=alice).json()
    assert len(rest["decisions"]) == 1 and rest["has_more"] is False and rest["next"] is None
