"""`PATCH` and `DELETE` of a listing by its marketplace, on real embeddings and photos: a new title
or seller category is scored again from the stored vector (the photo is never fetched again), a
decision on the old text stops standing; a deletion removes every row and object of it."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from common.db import Database
from common.jobs.claims import Claimed
from common.jobs.embed import EmbedPipeline
from common.jobs.explain import explain_listings
from common.object_store import ObjectStore
from common.schema import Embedding, Listing, ListingStatus, ModeratorDecision, Suggestion
from common.settings import Settings
from common.vision.backbone import Backbone
from tests.fixtures.review import Tokens, bearer
from tests.helpers import flipkart_rows, seed_listings
from tests.integration.review.test_problems import problem


class NeverFetches(EmbedPipeline):
    def fetch(self, item: Claimed) -> bytes:
        raise AssertionError(f"listing {item.listing_id}'s photo was fetched again")


def _state(db: Database, listing_id: int) -> tuple[Listing, Suggestion | None, int]:
    with db.transaction() as session:
        listing = session.get(Listing, listing_id)
        assert listing is not None
        suggestion = session.execute(
            select(Suggestion).where(Suggestion.listing_id == listing_id)
        ).scalar_one_or_none()
        vectors = session.execute(
            select(func.count()).select_from(Embedding).where(Embedding.listing_id == listing_id)
        ).scalar_one()
        session.expunge_all()
        return listing, suggestion, vectors


def test_a_new_title_or_category_is_scored_again_without_embedding_the_photo(
    client: TestClient, tokens: Tokens, db: Database, settings: Settings, store: ObjectStore, lite0: Backbone
) -> None:
    rows = flipkart_rows("Watches")[:3] + flipkart_rows("Computers")[:3]
    ids = seed_listings(db, settings, store, lite0, rows)
    external_id = rows[0]["uniq_id"]
    listing_id = ids[external_id]
    before, suggestion, _ = _state(db, listing_id)
    assert before.seller_category == "Watches" and suggestion is not None

    shop = bearer(tokens.ingest)
    changed = client.patch(
        f"/api/v1/listings/{external_id}",
        json={"title": "Steel wrist watch", "seller_category": None},
        headers=shop,
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["title"], changed.json()["seller_category"]) == ("Steel wrist watch", None)
    listing, _, _ = _state(db, listing_id)
    assert listing.revision == before.revision + 1 and listing.status == ListingStatus.queued

    report = NeverFetches(settings, db, lite0, store).run([listing_id])
    assert listing_id in report.suggested and listing_id not in report.embedded
    listing, suggestion, vectors = _state(db, listing_id)
    assert listing.status == ListingStatus.suggested and vectors == 1
    assert suggestion is not None and suggestion.revision == listing.revision
    # The same text again changes nothing.
    same = client.patch(f"/api/v1/listings/{external_id}", json={"title": "Steel wrist watch"}, headers=shop)
    assert same.status_code == 200 and _state(db, listing_id)[0].revision == listing.revision

    problem(
        client.patch("/api/v1/listings/nope", json={"title": "x"}, headers=shop), 404, "listing_not_found"
    )
    bad = client.patch(
        f"/api/v1/listings/{external_id}", json={"seller_category": "a\x07b", "price": 3}, headers=shop
    )
    assert {e["pointer"] for e in problem(bad, 422, "invalid")["errors"]} == {"/seller_category", "/price"}
    problem(
        client.patch(f"/api/v1/listings/{external_id}", json=["title"], headers=shop), 422, "not_an_object"
    )


def test_a_deleted_listing_takes_its_rows_and_objects_with_it(
    client: TestClient,
    tokens: Tokens,
    db: Database,
    settings: Settings,
    store: ObjectStore,
    overlay_bucket: str,
    lite0: Backbone,
) -> None:
    rows = flipkart_rows("Watches")[:3] + flipkart_rows("Computers")[:3]
    ids = seed_listings(db, settings, store, lite0, rows)
    gone, kept = rows[0]["uniq_id"], rows[1]["uniq_id"]
    assert ids[gone] in explain_listings(db, [ids[gone]], settings, lite0, store).explained
    _, suggestion, _ = _state(db, ids[gone])
    assert suggestion is not None and suggestion.overlay_key is not None
    with db.transaction() as session:
        photo = session.get(Listing, ids[gone]).image_url  # type: ignore[union-attr]
    bucket, key = photo[len("s3://") :].split("/", 1)
    assert store.client.stat_object(bucket, key) is not None

    assert client.delete(f"/api/v1/listings/{gone}", headers=bearer(tokens.ingest)).status_code == 204
    problem(client.get(f"/api/v1/listings/{gone}", headers=bearer(tokens.ingest)), 404, "listing_not_found")
    problem(
        client.delete(f"/api/v1/listings/{gone}", headers=bearer(tokens.ingest)), 404, "listing_not_found"
    )
    with db.transaction() as session:
        for table in (Embedding, Suggestion, ModeratorDecision):
            left = session.execute(
                select(func.count()).select_from(table).where(table.listing_id == ids[gone])
            ).scalar_one()
            assert left == 0, table
    names = {o.object_name for o in store.client.list_objects(overlay_bucket, recursive=True)}
    assert suggestion.overlay_key not in names
    assert key not in {o.object_name for o in store.client.list_objects(bucket, recursive=True)}
    # Another listing is untouched.
    assert client.get(f"/api/v1/listings/{kept}", headers=bearer(tokens.ingest)).status_code == 200
