"""`/api/v1/listings`: ingest through the publisher's own code path, and reading a listing's outcome."""

from __future__ import annotations

import threading
import time

import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from common.db import Database
from common.delivery.queues import EMBED_QUEUE
from common.schema import Listing, ListingStatus
from common.settings import Settings
from tests.fixtures.review import Tokens, add_flagged, bearer


def _count(db: Database) -> int:
    with db.transaction() as session:
        return session.execute(select(func.count()).select_from(Listing)).scalar_one()


def test_ingest_one_listing_then_the_same_again(
    client: TestClient, tokens: Tokens, db: Database, settings: Settings
) -> None:
    item = {
        "external_id": "shop-1",
        "image_url": "https://photos.example/1.jpg",
        "seller_category": "Watches",
    }
    response = client.post("/api/v1/listings", json=item, headers=bearer(tokens.ingest))
    assert response.status_code == 202
    assert response.json()["results"] == [{"index": 0, "external_id": "shop-1", "outcome": "created"}]
    # Recorded and queued like `publish_listing`: row committed, message sent, marked sent.
    with db.transaction() as session:
        listing = session.execute(select(Listing).where(Listing.external_id == "shop-1")).scalar_one()
        assert listing.status == ListingStatus.queued and listing.enqueued_at is not None
        assert listing.seller_category == "Watches"
    assert redis.Redis.from_url(settings.services.broker_url).llen(EMBED_QUEUE) == 1
    again = client.post("/api/v1/listings", json=[item], headers=bearer(tokens.ingest)).json()
    assert again["results"][0]["outcome"] == "unchanged"
    moved = client.post(
        "/api/v1/listings",
        json=[{**item, "image_url": "https://photos.example/1b.jpg"}],
        headers=bearer(tokens.ingest),
    ).json()
    assert moved["results"][0]["outcome"] == "requeued"


def test_one_bad_item_does_not_reject_the_others(client: TestClient, tokens: Tokens, db: Database) -> None:
    items = [
        {"external_id": "ok-1", "image_url": "https://photos.example/1.jpg"},
        {"external_id": "bad-url", "image_url": "ftp://photos.example/2.jpg"},
        {"external_id": "ok-2", "image_url": "https://photos.example/3.jpg", "title": "<b>lamp</b>"},
        {"image_url": "https://photos.example/4.jpg"},
        {"external_id": "other-bucket", "image_url": "s3://someone-elses/photo.jpg"},
        {"external_id": "extra", "image_url": "https://photos.example/5.jpg", "price": 3},
        "not an object",
    ]
    body = client.post("/api/v1/listings", json=items, headers=bearer(tokens.ingest)).json()
    assert (body["accepted"], body["rejected"]) == (2, 5)
    results = body["results"]
    assert [r["index"] for r in results] == list(range(7))
    assert results[0]["outcome"] == "created" and results[2]["outcome"] == "created"
    assert results[1]["error"]["field"] == "image_url"
    assert results[3]["error"]["field"] == "external_id"
    assert results[4]["error"]["field"] == "image_url" and "someone-elses" in results[4]["error"]["message"]
    assert results[5]["error"]["field"] == "price"
    assert results[6]["error"]["field"] == "item"
    assert _count(db) == 2


def test_s3_photos_only_under_the_publishers_prefix(
    client: TestClient, tokens: Tokens, db: Database, settings: Settings
) -> None:
    bucket = settings.store.images_bucket
    items = [
        {"external_id": "ours", "image_url": f"s3://{bucket}/photos/ab/abcdef.jpg"},
        {"external_id": "elsewhere", "image_url": f"s3://{bucket}/exports/customers.csv"},
        {"external_id": "dot-dot", "image_url": f"s3://{bucket}/../etc/passwd"},
        {"external_id": "climb", "image_url": f"s3://{bucket}/photos/../exports/customers.csv"},
    ]
    results = client.post("/api/v1/listings", json=items, headers=bearer(tokens.ingest)).json()["results"]
    assert results[0]["outcome"] == "created"
    for result in results[1:]:
        assert result["error"]["field"] == "image_url", result
    assert "VITRINE_IMAGES_PREFIX" in results[1]["error"]["message"]
    assert "'..'" in results[2]["error"]["message"] and "'..'" in results[3]["error"]["message"]
    assert _count(db) == 1


def test_oversized_or_malformed_bodies_write_nothing(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    many = [{"external_id": f"x{i}", "image_url": "https://photos.example/x.jpg"} for i in range(501)]
    response = client.post("/api/v1/listings", json=many, headers=bearer(tokens.ingest))
    assert response.status_code == 413 and "at most 500" in response.json()["detail"]
    response = client.post(
        "/api/v1/listings",
        content=b'{"external_id": "x", ',
        headers={**bearer(tokens.ingest), "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["detail"].startswith("body: malformed JSON")
    assert client.post("/api/v1/listings", json=[], headers=bearer(tokens.ingest)).status_code == 422
    assert _count(db) == 0


def test_get_a_listing_with_its_suggestion(client: TestClient, tokens: Tokens, db: Database) -> None:
    said = {"image": {"category": "Watches", "probability": 0.3}}
    add_flagged(db, [("l-1", 0.3)], seller_category="Footwear", signals=said)
    for token in (tokens.ingest, tokens.alice):
        body = client.get("/api/v1/listings/l-1", headers=bearer(token)).json()
        assert body["status"] == "suggested" and body["seller_category"] == "Footwear"
        suggestion = body["suggestion"]
        assert suggestion["category"] == "Watches" and suggestion["confidence"] == 0.3
        assert len(suggestion["alternatives"]) == 3 and suggestion["needs_review"] is True
        assert suggestion["cluster"] == 0 and suggestion["clustering_version"] >= 1
        assert suggestion["signals"] == said
        assert suggestion["overlay_url"] is None and body["decision"] is None
        assert suggestion["gradcam_url"] is None  # the old name, answered for one release
    missing = client.get("/api/v1/listings/nope", headers=bearer(tokens.ingest))
    assert missing.status_code == 404 and "external_id" in missing.json()["detail"]
    too_long = client.get("/api/v1/listings/l-1?wait=31", headers=bearer(tokens.ingest))
    assert too_long.status_code == 422 and "wait" in too_long.json()["detail"]


def test_wait_returns_when_the_listing_is_done_without_holding_a_connection(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    client.post(
        "/api/v1/listings",
        json={"external_id": "w-1", "image_url": "https://photos.example/w.jpg"},
        headers=bearer(tokens.ingest),
    )
    started = time.monotonic()
    body = client.get("/api/v1/listings/w-1?wait=0.6", headers=bearer(tokens.ingest)).json()
    assert body["status"] == "queued" and time.monotonic() - started >= 0.6

    answer: dict[str, object] = {}
    checked_out: list[int] = []

    def wait() -> None:
        answer.update(client.get("/api/v1/listings/w-1?wait=20", headers=bearer(tokens.ingest)).json())

    waiter = threading.Thread(target=wait)
    started = time.monotonic()
    waiter.start()
    for _ in range(5):
        time.sleep(0.1)
        checked_out.append(db.engine.pool.checkedout())  # type: ignore[attr-defined]
    with db.transaction() as session:
        session.execute(
            update(Listing)
            .where(Listing.external_id == "w-1")
            .values(status=ListingStatus.failed, failure_reason="unreadable")
        )
    waiter.join(timeout=10)
    assert answer["status"] == "failed" and answer["failure_reason"] == "unreadable"
    assert time.monotonic() - started < 5
    # Between looks the waiting request holds no connection (a look takes milliseconds of 100).
    assert min(checked_out) == 0


def test_a_list_naming_one_listing_twice_records_it_once(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    first = {"external_id": "twice", "image_url": "https://photos.example/t.jpg"}
    items = [first, first, {**first, "image_url": "https://photos.example/t2.jpg"}]
    body = client.post("/api/v1/listings", json=items, headers=bearer(tokens.ingest)).json()
    assert [r["outcome"] for r in body["results"]] == ["created", "unchanged", "requeued"]
    assert _count(db) == 1
