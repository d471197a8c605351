"""The moderators' pages: the review page and its forms, history and dashboard, all escaped."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from common.db import Database
from tests.fixtures.review import Tokens, add_flagged
from tests.integration.review.test_auth import sign_in

HOSTILE = '<script>alert("x")</script>'


def test_review_page_decides_through_its_forms_and_escapes_what_sellers_wrote(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    signals = {
        "image": {"category": "Watches", "probability": 0.55},
        "title": {"category": "Footwear", "probability": 0.9},
    }
    add_flagged(db, [("p1", 0.1)], title=HOSTILE, seller_category="<b>Shoes</b>", signals=signals)
    add_flagged(db, [("p2", 0.2)], reason="seller_disagrees")
    csrf = sign_in(client)
    page = client.get("/review").text
    assert HOSTILE not in page and "&lt;script&gt;alert(" in page
    assert "<b>Shoes</b>" not in page and "&lt;b&gt;Shoes&lt;/b&gt;" in page
    assert 'id="waiting-total">2<' in page and "low confidence" in page
    assert _shown(page) == "p1" and 'data-key="a"' in page and 'data-key="3"' in page
    # What each signal said on its own.
    assert re.search(r"photo says\s+<strong>Watches</strong> \(55%\)", page)
    assert re.search(r"title says\s+<strong>Footwear</strong> \(90%\)", page)
    # A form without the CSRF token is refused.
    decide = {"external_id": "p1", "action": "accept"}
    refused = client.post("/review/decide", data=decide, follow_redirects=False)
    assert refused.status_code == 403
    done = client.post("/review/decide", data={**decide, "csrf_token": csrf}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/review"
    page = client.get("/review").text
    assert 'id="waiting-total">1<' in page and 'id="decided-today">1<' in page
    assert _shown(page) == "p2" and 'id="undo-id" value="p1"' in page
    # A refusal comes back once as a notice on the page, not in the address.
    again = client.post("/review/decide", data={**decide, "csrf_token": csrf}, follow_redirects=False)
    assert again.headers["location"] == "/review"
    assert "already decided" in client.get("/review").text
    assert "already decided" not in client.get("/review").text
    undone = client.post("/review/undo", data={"external_id": "p1", "csrf_token": csrf})
    assert undone.status_code == 200 and 'id="decided-today">0<' in undone.text
    # Undo gives the item back to the moderator: it is the one shown.
    assert _shown(undone.text) == "p1"


def _shown(page: str) -> str | None:
    found = re.search(r'<article class="desk-item" data-external-id="([^"]*)"', page)
    return None if found is None else found.group(1)


def test_history_and_dashboard_pages(client: TestClient, tokens: Tokens, db: Database) -> None:
    add_flagged(db, [("h1", 0.1)], title=HOSTILE)
    csrf = sign_in(client)
    client.get("/review")
    client.post(
        "/review/decide",
        data={
            "external_id": "h1",
            "action": "override",
            "category": "Footwear",
            "note": HOSTILE,
            "csrf_token": csrf,
        },
    )
    history = client.get("/history?moderator=alice").text
    assert HOSTILE not in history and history.count("&lt;script&gt;") == 2
    assert re.search(r"<td>override</td>", history) and "Footwear" in history
    dashboard = client.get("/dashboard").text
    assert "<polyline" in dashboard and "From moderators: <strong>1</strong>" in dashboard
    # The override just made is this hour's bar in the decisions chart.
    assert re.search(r"<rect [^>]*><title>[^<]* UTC, override: 1</title>", dashboard)
    assert ">embed<" in dashboard and ">refit<" in dashboard
    # The current version's acceptance threshold, with what it expects.
    assert re.search(r"confidence ≥ <strong>0\.720</strong>", dashboard) and "coverage 0.610" in dashboard
    script = client.get("/static/review.js")
    assert script.status_code == 200 and "keydown" in script.text
    assert client.get("/static/other.js").status_code == 404
