"""The desk's calls: items kept ready, leases renewed and given back, ids of any characters,
the triage order, filters, and what waits for a moderator after they skip."""

from __future__ import annotations

from urllib.parse import quote

from fastapi.testclient import TestClient
from sqlalchemy import select, text

from common.db import Database
from common.moderation import queue
from common.moderation.triage import priority, priority_of
from common.schema import Suggestion
from tests.fixtures.review import Tokens, add_flagged, bearer
from tests.integration.review.test_auth import sign_in

JSON = {"Accept": "application/json"}
# Ids a marketplace may send: a path inside, dot segments, characters URLs reserve.
AWKWARD = ["a/../../sign-out", "..", "sku 12?x=1#top", "100%/cotton"]


def _next(client: TestClient, csrf: str, n: int, exclude: tuple[str, ...] = (), **filters: str) -> list[str]:
    data: dict[str, object] = {"n": n, "csrf_token": csrf, "exclude": list(exclude), **filters}
    response = client.post("/review/next", data=data, headers=JSON)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    for item in items:
        assert f'data-external-id="{item["external_id"]}"' in item["html"].replace("&#34;", '"')
    return [str(item["external_id"]) for item in items]


def test_the_desk_keeps_items_ready_renews_and_gives_them_back(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [(f"d{i}", 0.1 + i / 100) for i in range(6)])
    csrf = sign_in(client)
    assert _next(client, csrf, 3) == ["d0", "d1", "d2"]
    # What the desk already holds is not handed again; the next ones are.
    assert _next(client, csrf, 2, exclude=("d0", "d1", "d2")) == ["d3", "d4"]
    # Bob meanwhile gets what nobody holds.
    claimed = client.post("/api/v1/review/claim", headers=bearer(tokens.bob))
    assert claimed.json()["external_id"] == "d5"
    renewed = client.post("/review/renew", data={"external_id": ["d1", "d2", "d5"], "csrf_token": csrf})
    assert renewed.json() == {"renewed": 2}  # d5 is bob's
    released = client.post("/review/release", data={"external_id": ["d3", "d4"], "csrf_token": csrf})
    assert released.json() == {"released": 2}
    claimed = client.post("/api/v1/review/claim", headers=bearer(tokens.bob))
    assert claimed.json()["external_id"] == "d5"  # his own first
    assert client.post("/review/release", data={"external_id": ["d5"]}).status_code == 403  # no CSRF
    # A decision through the desk answers JSON with the new counts, and a refusal its reason.
    done = client.post(
        "/review/decide", data={"external_id": "d0", "action": "accept", "csrf_token": csrf}, headers=JSON
    )
    assert done.status_code == 200
    assert done.json()["progress"]["decided_today"] == 1
    assert done.json()["progress"]["last"]["external_id"] == "d0"
    again = client.post(
        "/review/decide", data={"external_id": "d0", "action": "accept", "csrf_token": csrf}, headers=JSON
    )
    assert again.status_code == 409 and "already decided" in again.json()["detail"]
    undone = client.post("/review/undo", data={"external_id": "d0", "csrf_token": csrf}, headers=JSON)
    assert [i["external_id"] for i in undone.json()["items"]] == ["d0"]


def path_segment(external_id: str) -> str:
    """An id as one path segment: every reserved character encoded, and the dots of a dot segment
    (`.`, `..`), which clients would otherwise resolve away."""
    encoded = quote(external_id, safe="")
    return encoded.replace(".", "%2E") if set(external_id) == {"."} else encoded


def test_ids_of_any_characters_work_in_pages_and_api(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [(external_id, 0.1 + n / 10) for n, external_id in enumerate(AWKWARD)])
    csrf = sign_in(client)
    first, second, *rest = AWKWARD
    # The page's form carries the id as a field, never in its address.
    page = client.get("/review").text
    assert 'action="/review/decide"' in page and f'value="{first}"' in page
    done = client.post(
        "/review/decide", data={"external_id": first, "action": "accept", "csrf_token": csrf}, headers=JSON
    )
    assert done.status_code == 200, done.text
    # The API takes the id percent-encoded in the path, `/` included.
    for external_id in [second, *rest]:
        claimed = client.post("/api/v1/review/claim", headers=bearer(tokens.bob))
        assert claimed.json()["external_id"] == external_id
        path = path_segment(external_id)
        decided = client.post(
            f"/api/v1/review/{path}/decision", json={"action": "accept"}, headers=bearer(tokens.bob)
        )
        assert decided.status_code == 200, (external_id, decided.text)
        assert decided.json()["external_id"] == external_id
        read = client.get(f"/api/v1/listings/{path}", headers=bearer(tokens.ingest))
        assert read.status_code == 200 and read.json()["decision"]["action"] == "accept"
    undone = client.post(f"/api/v1/review/{path_segment(rest[-1])}/undo", headers=bearer(tokens.bob))
    assert undone.status_code == 200, undone.text


def test_triage_weighs_reason_and_confidence_and_reads_the_index(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [("low-0.30", 0.30), ("low-0.50", 0.50), ("low-0.60", 0.60)])
    add_flagged(db, [("seller-0.90", 0.90)], reason="seller_disagrees")
    add_flagged(db, [("audit-0.95", 0.95)], reason="audit_sample")
    items = [
        ("low-0.30", 0.3, None),
        ("low-0.50", 0.5, None),
        ("low-0.60", 0.6, None),
        ("seller-0.90", 0.9, "seller_disagrees"),
        ("audit-0.95", 0.95, "audit_sample"),
    ]
    expected = sorted(items, key=lambda row: priority_of(row[1], row[2]))
    # A confident contradiction of the seller comes with the mid-confidence items, not last.
    assert [row[0] for row in expected] == ["low-0.30", "seller-0.90", "low-0.50", "audit-0.95", "low-0.60"]
    order = []
    for _ in expected:
        claimed = client.post("/api/v1/review/claim", headers=bearer(tokens.alice)).json()["external_id"]
        order.append(claimed)
        client.post(
            f"/api/v1/review/{claimed}/decision", json={"action": "accept"}, headers=bearer(tokens.alice)
        )
    assert order == [row[0] for row in expected]
    # The queue's order can be read off the triage index rather than sorted: its expression is
    # the one `priority()` compiles to (with sorting and scans priced out, the plan shows which).
    with db.transaction() as session:
        session.execute(text("SET LOCAL enable_seqscan = off"))
        session.execute(text("SET LOCAL enable_sort = off"))
        statement = (
            select(Suggestion.listing_id)
            .where(Suggestion.needs_review)
            .order_by(priority(), Suggestion.listing_id)
            .limit(1)
        )
        compiled = statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
        plan = "\n".join(r[0] for r in session.execute(text(f"EXPLAIN {compiled}")))
    assert "ix_suggestion_triage" in plan and "Sort" not in plan, plan


def test_filters_and_skips(client: TestClient, tokens: Tokens, db: Database) -> None:
    add_flagged(db, [("w1", 0.2), ("w2", 0.65)])
    add_flagged(db, [("f1", 0.4)], category="Footwear", reason="seller_disagrees")
    csrf = sign_in(client)
    assert _next(client, csrf, 3, reason="seller_disagrees") == ["f1"]
    assert _next(client, csrf, 3, exclude=("f1",), min_confidence="0.5", max_confidence="0.9") == ["w2"]
    assert _next(client, csrf, 3, exclude=("f1", "w2"), category="Watches") == ["w1"]
    claimed = client.post("/api/v1/review/claim", params={"reason": "nonsense"}, headers=bearer(tokens.bob))
    assert claimed.status_code == 422
    # A skip leaves this moderator's waiting count and is counted apart; others still see it.
    skipped = client.post(
        "/review/decide", data={"external_id": "w1", "action": "skip", "csrf_token": csrf}, headers=JSON
    )
    progress = skipped.json()["progress"]
    assert (progress["waiting"], progress["skipped_by_you"]) == (2, 1)
    with db.transaction() as session:
        assert sum(queue.waiting_counts(session)["per_reason"].values()) == 3
        assert sum(queue.waiting_counts(session, "bob")["per_reason"].values()) == 3


def test_a_changed_decision_shows_its_previous_overlay_marked_until_the_new_one(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    add_flagged(db, [("changed", 0.2)])
    with db.transaction() as session:
        session.execute(
            text(
                "UPDATE suggestion SET previous_heatmap_key = 'overlays/9/old-heat.png',"
                " previous_overlay_key = 'overlays/9/old.png', previous_explain_target = 'Footwear'"
            )
        )
    csrf = sign_in(client)
    (item,) = client.post("/review/next", data={"n": 1, "csrf_token": csrf}, headers=JSON).json()["items"]
    assert 'id="heat"' in item["html"] and "old-heat.png" in item["html"]
    assert 'id="overlay-stale"' in item["html"] and "earlier suggestion (Footwear)" in item["html"]
    with db.transaction() as session:
        session.execute(text("UPDATE suggestion SET heatmap_key = 'overlays/9/new-heat.png'"))
    page = client.get("/review").text
    assert "new-heat.png" in page and "old-heat.png" not in page and 'id="overlay-stale"' not in page
