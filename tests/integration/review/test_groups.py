"""Groups on the desk: look-alike items with one suggestion come together, one decision each."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import select

from common.db import Database
from common.moderation.labels import standing
from common.schema import Embedding, Listing, ModeratorDecision
from tests.fixtures.review import Tokens, add_flagged, bearer
from tests.integration.review.test_auth import sign_in
from vitrine.evaluation.groups import queue_actions

JSON = {"Accept": "application/json"}


def _embed(db: Database, vectors: dict[str, list[float]]) -> None:
    with db.transaction() as session:
        for external_id, values in vectors.items():
            vector = np.asarray(values, dtype=np.float32)
            listing_id = session.execute(
                select(Listing.id).where(Listing.external_id == external_id)
            ).scalar_one()
            session.add(
                Embedding(
                    listing_id=listing_id,
                    backbone_id="test@0",
                    image_sha256="0" * 64,
                    dim=len(values),
                    vector=vector / np.linalg.norm(vector),
                )
            )


def _standing(db: Database) -> dict[str, str]:
    with db.transaction() as session:
        rows = session.execute(
            select(Listing.external_id, ModeratorDecision.action)
            .join(Listing, Listing.id == ModeratorDecision.listing_id)
            .where(ModeratorDecision.action != "undo", standing())
        ).all()
    return {r.external_id: r.action for r in rows}


def test_look_alikes_are_decided_together_each_with_its_own_row(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [("lead", 0.1), ("twin", 0.3), ("triplet", 0.35), ("unlike", 0.4), ("held", 0.45)])
    add_flagged(db, [("other-category", 0.2)], category="Footwear")
    _embed(
        db,
        {
            "lead": [1.0, 0.0, 0.0],
            "twin": [1.0, 0.05, 0.0],
            "triplet": [1.0, 0.0, 0.1],
            "unlike": [0.3, 1.0, 0.0],  # cosine 0.29: another product
            "held": [1.0, 0.02, 0.02],  # a look-alike that bob holds
            "other-category": [1.0, 0.0, 0.01],  # looks alike, but another suggestion
        },
    )
    bob = client.post("/api/v1/review/claim?min_confidence=0.44", headers=bearer(tokens.bob))
    assert bob.json()["external_id"] == "held"
    csrf = sign_in(client)
    response = client.post("/review/next", data={"n": 1, "csrf_token": csrf}, headers=JSON)
    (item,) = response.json()["items"]
    assert item["external_id"] == "lead" and item["members"] == ["twin", "triplet"]
    assert 'id="group"' in item["html"] and item["html"].count('name="member"') == 2
    # The next claim skips what the group took.
    response = client.post(
        "/review/next",
        data={"n": 2, "csrf_token": csrf, "exclude": ["lead", "twin", "triplet"]},
        headers=JSON,
    )
    assert [i["external_id"] for i in response.json()["items"]] == ["other-category", "unlike"]

    # One decision for the lead and the members left ticked; each is a row of its own.
    decided = client.post(
        "/review/decide",
        data={
            "external_id": "lead",
            "action": "override",
            "category": "Jewellery",
            "member": ["twin", "triplet"],
            "csrf_token": csrf,
        },
        headers=JSON,
    )
    assert decided.status_code == 200, decided.text
    assert _standing(db) == {"lead": "override", "twin": "override", "triplet": "override"}
    # One member undone alone: it is back, the others stand.
    undone = client.post("/review/undo", data={"external_id": "twin", "csrf_token": csrf}, headers=JSON)
    assert [i["external_id"] for i in undone.json()["items"]] == ["twin"]
    assert _standing(db) == {"lead": "override", "triplet": "override"}


def test_a_member_left_unticked_waits_for_its_own_decision(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [("lead", 0.1), ("twin", 0.3), ("triplet", 0.35)])
    _embed(db, {"lead": [1.0, 0.0], "twin": [1.0, 0.05], "triplet": [1.0, 0.1]})
    csrf = sign_in(client)
    (item,) = client.post("/review/next", data={"n": 1, "csrf_token": csrf}, headers=JSON).json()["items"]
    assert item["members"] == ["twin", "triplet"]
    client.post(
        "/review/decide",
        data={"external_id": "lead", "action": "accept", "member": ["twin"], "csrf_token": csrf},
        headers=JSON,
    )
    assert _standing(db) == {"lead": "accept", "twin": "accept"}
    (item,) = client.post("/review/next", data={"n": 1, "csrf_token": csrf}, headers=JSON).json()["items"]
    assert item["external_id"] == "triplet" and item["members"] == []


def test_the_queue_count_walks_it_with_and_without_groups_and_keeps_nothing(
    tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [("lead", 0.1), ("twin", 0.3), ("unlike", 0.4)])
    add_flagged(db, [("none", 0.2)], category="Footwear")
    _embed(db, {"lead": [1.0, 0.0], "twin": [1.0, 0.05], "unlike": [0.0, 1.0], "none": [1.0, 0.0]})
    figures = queue_actions(db)
    assert figures["without_groups"] == {
        "waiting": 4,
        "actions": 4,
        "groups": 0,
        "grouped_items": 0,
        "mixed_groups": 0,
    }
    assert figures["with_groups"] == {
        "waiting": 4,
        "actions": 3,
        "groups": 1,
        "grouped_items": 1,
        "mixed_groups": 0,
    }
    assert _standing(db) == {}
