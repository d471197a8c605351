"""Listings belong to their source: two marketplaces' tokens, one `external_id` each, and neither
sees, changes or removes the other's listing; moderators see every source's."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from common.db import Database, alembic_config, drop_database, migrate
from common.moderation.accounts import add_token
from common.schema import DEFAULT_SOURCE_ID, ApiToken, Listing, ModeratorDecision, Source
from common.settings import Settings
from common.sources.registry import SourceError, add_source
from tests.fixtures.review import Tokens, add_flagged, bearer
from tests.integration.review.test_auth import sign_in
from tests.integration.review.test_lifecycle import _vitrine
from vitrine.local.services import create_scratch_database


@dataclass(frozen=True)
class Marketplaces:
    acme: dict[str, str]
    globex: dict[str, str]
    initech: dict[str, str]  # a third source, with no listings
    acme_id: int
    globex_id: int


@pytest.fixture
def marketplaces(db: Database, tokens: Tokens) -> Marketplaces:
    with db.transaction() as session:
        acme, globex, initech = (add_source(session, name) for name in ("acme", "globex", "initech"))
        return Marketplaces(
            acme=bearer(add_token(session, "acme-feed", "ingest", source="acme")),
            globex=bearer(add_token(session, "globex-feed", "ingest", source="globex")),
            initech=bearer(add_token(session, "initech-feed", "ingest", source=initech.id)),
            acme_id=acme.id,
            globex_id=globex.id,
        )


def _post(client: TestClient, headers: dict[str, str], title: str, photo: str = "1") -> str:
    answer = client.post(
        "/api/v1/listings",
        json={"external_id": "sku-1", "image_url": f"https://photos.example/{photo}.jpg", "title": title},
        headers=headers,
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["results"][0]["outcome"])


def test_the_same_external_id_in_two_sources_is_two_listings(
    client: TestClient, marketplaces: Marketplaces, db: Database
) -> None:
    assert _post(client, marketplaces.acme, "Acme's watch") == "created"
    # Before sources this answered `requeued` and replaced acme's title and photo.
    assert _post(client, marketplaces.globex, "Globex's shoe", photo="2") == "created"
    assert _post(client, marketplaces.acme, "Acme's watch") == "unchanged"

    acme = client.get("/api/v1/listings/sku-1", headers=marketplaces.acme).json()
    globex = client.get("/api/v1/listings/sku-1", headers=marketplaces.globex).json()
    assert (acme["source"], acme["title"]) == ("acme", "Acme's watch")
    assert (globex["source"], globex["title"]) == ("globex", "Globex's shoe")
    with db.transaction() as session:
        rows = session.execute(select(Listing.source_id, Listing.title).order_by(Listing.source_id)).all()
    assert rows == [(marketplaces.acme_id, "Acme's watch"), (marketplaces.globex_id, "Globex's shoe")]


def test_another_sources_listing_is_absent_to_a_token(
    client: TestClient, marketplaces: Marketplaces, db: Database
) -> None:
    _post(client, marketplaces.acme, "Acme's watch")
    stranger = marketplaces.initech
    for answer in (
        client.get("/api/v1/listings/sku-1", headers=stranger),
        client.get("/api/v1/listings/sku-1?wait=1", headers=stranger),
        client.patch("/api/v1/listings/sku-1", json={"title": "mine now"}, headers=stranger),
        client.delete("/api/v1/listings/sku-1", headers=stranger),
        # Naming the other source changes nothing: the same 404 as a listing that never was.
        client.get("/api/v1/listings/sku-1?source=acme", headers=stranger),
    ):
        assert answer.status_code == 404, answer.text
        assert answer.json()["code"] == "listing_not_found"
    never = client.get("/api/v1/listings/sku-404", headers=stranger)
    assert never.json()["detail"].replace("sku-404", "sku-1") == answer.json()["detail"]
    assert client.get("/api/v1/listings", headers=stranger).json()["listings"] == []
    assert client.get("/api/v1/listings?source=acme", headers=stranger).json()["listings"] == []

    # Untouched, and still acme's to change and remove.
    assert client.get("/api/v1/listings/sku-1", headers=marketplaces.acme).json()["title"] == "Acme's watch"
    patched = client.patch(
        "/api/v1/listings/sku-1", json={"title": "Acme's new watch"}, headers=marketplaces.acme
    )
    assert patched.status_code == 200 and patched.json()["title"] == "Acme's new watch"
    assert client.delete("/api/v1/listings/sku-1", headers=marketplaces.acme).status_code == 204
    with db.transaction() as session:
        assert session.execute(select(func.count()).select_from(Listing)).scalar_one() == 0


def test_a_token_pages_through_its_own_sources_listings_only(
    client: TestClient, marketplaces: Marketplaces, tokens: Tokens
) -> None:
    for i in range(3):
        body = {"external_id": f"a-{i}", "image_url": f"https://photos.example/a{i}.jpg"}
        assert client.post("/api/v1/listings", json=body, headers=marketplaces.acme).status_code == 202
    body = {"external_id": "g-0", "image_url": "https://photos.example/g0.jpg"}
    assert client.post("/api/v1/listings", json=body, headers=marketplaces.globex).status_code == 202

    def ids(headers: dict[str, str], query: str = "") -> list[str]:
        page = client.get(f"/api/v1/listings{query}", headers=headers)
        assert page.status_code == 200, page.text
        return sorted(listing["external_id"] for listing in page.json()["listings"])

    assert ids(marketplaces.acme) == ["a-0", "a-1", "a-2"]
    assert ids(marketplaces.globex) == ["g-0"]
    moderator = bearer(tokens.alice)
    assert ids(moderator) == ["a-0", "a-1", "a-2", "g-0"]
    assert ids(moderator, "?source=globex") == ["g-0"]
    assert ids(moderator, "?source=no-such-source") == []


def test_moderators_see_every_source_and_name_one_where_ids_collide(
    client: TestClient, marketplaces: Marketplaces, tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [("sku-1", 0.41)], source_id=marketplaces.acme_id, title="acme's")
    add_flagged(db, [("sku-1", 0.42)], source_id=marketplaces.globex_id, title="globex's")
    alice = bearer(tokens.alice)

    ambiguous = client.get("/api/v1/listings/sku-1", headers=alice)
    assert ambiguous.status_code == 409
    assert ambiguous.json()["code"] == "ambiguous_listing"
    assert "acme" in ambiguous.json()["detail"] and "globex" in ambiguous.json()["detail"]
    named = client.get("/api/v1/listings/sku-1?source=globex", headers=alice)
    assert named.status_code == 200 and named.json()["title"] == "globex's"
    assert client.get("/api/v1/listings/sku-1?source=nowhere", headers=alice).status_code == 404

    # A claim says whose listing it is; the decision needs no source: the claim tells them apart.
    claimed = client.post("/api/v1/review/claim", headers=alice).json()
    assert claimed["external_id"] == "sku-1" and claimed["source"] in ("acme", "globex")
    mine = claimed["source"]
    other = "acme" if mine == "globex" else "globex"
    decided = client.post("/api/v1/review/sku-1/decision", json={"action": "accept"}, headers=alice)
    assert decided.status_code == 200, decided.text
    assert decided.json()["source"] == mine
    undone = client.post("/api/v1/review/sku-1/undo", headers=alice)
    assert undone.status_code == 200 and undone.json()["source"] == mine
    assert (
        client.post("/api/v1/review/sku-1/decision", json={"action": "accept"}, headers=alice).json()[
            "source"
        ]
        == mine
    )

    # Bob holds nothing: without a source his decision cannot say which listing it is.
    bob = bearer(tokens.bob)
    refused = client.post("/api/v1/review/sku-1/decision", json={"action": "accept"}, headers=bob)
    assert refused.status_code == 409 and refused.json()["code"] == "ambiguous_listing"
    # Named, it is an ordinary "claim it first".
    named_decision = client.post(
        f"/api/v1/review/sku-1/decision?source={other}", json={"action": "accept"}, headers=bob
    )
    assert named_decision.status_code == 409 and named_decision.json()["code"] != "ambiguous_listing"
    with db.transaction() as session:
        decided_on = session.execute(
            select(Source.name)
            .join(Listing, Listing.source_id == Source.id)
            .join(ModeratorDecision, ModeratorDecision.listing_id == Listing.id)
        ).scalars()
        assert set(decided_on) == {mine}


def test_source_names_are_checked(db: Database, tokens: Tokens) -> None:
    with db.transaction() as session:
        add_source(session, "acme")
        for bad in ("acme", "Acme", "a/b", "a:b", "", "-x"):
            with pytest.raises(SourceError):
                add_source(session, bad)


def test_sources_and_their_tokens_from_the_command_line(
    db: Database, tokens: Tokens, child_env: dict[str, str], client: TestClient
) -> None:
    _vitrine(child_env, "sources", "add", "acme-shop")
    token = (
        _vitrine(child_env, "tokens", "add", "acme-feed", "--scope", "ingest", "--source", "acme-shop")
        .strip()
        .splitlines()[-1]
    )
    listed = _vitrine(child_env, "sources", "list")
    assert "acme-shop" in listed and "default" in listed
    assert "acme-shop" in _vitrine(child_env, "tokens", "list")
    body = {"external_id": "cli-1", "image_url": "https://photos.example/c.jpg"}
    assert client.post("/api/v1/listings", json=body, headers=bearer(token)).status_code == 202
    assert client.get("/api/v1/listings/cli-1", headers=bearer(token)).json()["source"] == "acme-shop"
    # The fixture's token, made without a source, is the default source's.
    assert client.get("/api/v1/listings/cli-1", headers=bearer(tokens.ingest)).status_code == 404
    with db.transaction() as session:
        assert (
            session.execute(select(ApiToken.source_id).where(ApiToken.name == "shop")).scalar_one()
            == DEFAULT_SOURCE_ID
        )


def test_migration_gives_todays_listings_and_ingest_tokens_to_the_default_source(
    settings: Settings,
) -> None:
    url = create_scratch_database(settings.services.database_url, "vitrine_migration")
    database = Database(url)
    try:
        migrate(url, "0010")
        with database.transaction() as session:
            session.execute(
                text(
                    "INSERT INTO listing (external_id, image_url, status, attempts)"
                    " VALUES ('old', 'https://photos.example/old.jpg', 'suggested', 0)"
                )
            )
            session.execute(
                text("INSERT INTO api_token (name, scope, token_hash) VALUES ('shop', 'ingest', 'x')")
            )
        migrate(url, "0011")
        with database.transaction() as session:
            assert session.execute(text("SELECT source_id FROM listing")).scalar_one() == DEFAULT_SOURCE_ID
            assert session.execute(text("SELECT source_id FROM api_token")).scalar_one() == DEFAULT_SOURCE_ID
            # The next source gets an id of its own.
            assert add_source(session, "acme").id != DEFAULT_SOURCE_ID
            assert session.execute(select(Source.name).order_by(Source.id)).scalars().all() == [
                "default",
                "acme",
            ]
        command.downgrade(alembic_config(url), "0010")
        with database.transaction() as session:
            assert session.execute(text("SELECT external_id FROM listing")).scalar_one() == "old"
    finally:
        database.dispose()
        drop_database(url)


def test_the_desk_holds_two_sources_items_of_one_id_and_decides_each(
    client: TestClient, marketplaces: Marketplaces, tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [("sku-1", 0.41)], source_id=marketplaces.acme_id, title="acme's")
    add_flagged(db, [("sku-1", 0.42)], source_id=marketplaces.globex_id, title="globex's")
    csrf = sign_in(client)
    json = {"Accept": "application/json"}
    items = client.post("/review/next", data={"n": 2, "csrf_token": csrf}, headers=json).json()["items"]
    assert [item["external_id"] for item in items] == ["sku-1", "sku-1"]
    shown = [item["html"] for item in items]
    assert 'name="source" value="acme"' in shown[0] and 'name="source" value="globex"' in shown[1]

    for source, category in (("globex", "Footwear"), ("acme", "Jewellery")):
        form = {"external_id": "sku-1", "source": source, "action": "override", "category": category}
        decided = client.post("/review/decide", data={**form, "csrf_token": csrf}, headers=json)
        assert decided.status_code == 200, decided.text
        assert decided.json()["progress"]["last"]["source"] == source
    # Undo names its source too: the acme decision goes, the globex one stands.
    form = {"external_id": "sku-1", "source": "acme", "csrf_token": csrf}
    undone = client.post("/review/undo", data=form, headers=json)
    assert undone.status_code == 200, undone.text
    assert 'name="source" value="acme"' in undone.json()["items"][0]["html"]
    alice = bearer(tokens.alice)
    assert (
        client.get("/api/v1/listings/sku-1?source=globex", headers=alice).json()["decision"]["category"]
        == "Footwear"
    )
    assert client.get("/api/v1/listings/sku-1?source=acme", headers=alice).json()["decision"] is None
