"""Nothing answers without credentials; tokens only do what their scope allows; sessions need CSRF."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from common.db import Database
from common.moderation.accounts import disable_user
from tests.fixtures.review import PASSWORD, Tokens, bearer


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def sign_in(client: TestClient, name: str = "alice", password: str = PASSWORD) -> str:
    """Sign in through the form; returns the session's CSRF token."""
    page = client.get("/sign-in")
    response = client.post(
        "/sign-in",
        data={"name": name, "password": password, "csrf_token": csrf_of(page.text), "next": "/history"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/history"
    return csrf_of(client.get("/history").text)


def test_only_healthz_the_api_description_and_the_sign_in_page_answer_without_credentials(
    client: TestClient, tokens: Tokens
) -> None:
    assert client.get("/healthz").json() == {"ok": True}
    assert client.get("/sign-in").status_code == 200
    # What the API is, never what it holds.
    assert client.get("/api/v1/openapi.json").json()["info"]["title"] == "Vitrine"
    assert client.get("/docs").status_code == client.get("/redoc").status_code == 200
    for path in ("/api/v1/listings/x", "/api/v1/stats", "/api/v1/review/history"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert "authorization" in response.json()["detail"]
    assert client.post("/api/v1/review/claim").status_code == 401
    assert client.post("/api/v1/listings", json=[]).status_code == 401
    for path in ("/review", "/history", "/dashboard", "/static/review.js", "/"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/sign-in")


def test_wrong_or_revoked_tokens_are_refused(client: TestClient, tokens: Tokens, db: Database) -> None:
    assert client.get("/api/v1/stats", headers=bearer("vt_not-a-token")).status_code == 401
    # A token of the wrong scope: 403 both ways.
    assert client.post("/api/v1/review/claim", headers=bearer(tokens.ingest)).status_code == 403
    assert client.post("/api/v1/listings", json=[], headers=bearer(tokens.alice)).status_code == 403
    assert client.get("/api/v1/stats", headers=bearer(tokens.alice)).status_code == 200
    assert (
        client.get("/api/v1/openapi.json", headers=bearer(tokens.ingest)).json()["info"]["title"] == "Vitrine"
    )
    with db.transaction() as session:
        disable_user(session, "alice")
    assert client.get("/api/v1/stats", headers=bearer(tokens.alice)).status_code == 401


def test_sign_in_session_cookie_csrf_and_sign_out(client: TestClient, tokens: Tokens) -> None:
    page = client.get("/sign-in")
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    # A sign-in without the form's CSRF token is refused.
    refused = client.post("/sign-in", data={"name": "alice", "password": PASSWORD, "csrf_token": "forged"})
    assert refused.status_code == 403
    wrong = client.post(
        "/sign-in", data={"name": "alice", "password": "nope", "csrf_token": csrf_of(page.text)}
    )
    assert wrong.status_code == 401 and "Wrong name or password" in wrong.text
    csrf = sign_in(client)
    assert client.get("/api/v1/stats").status_code == 200
    # State-changing API calls with a session cookie need the CSRF header.
    assert client.post("/api/v1/review/claim").status_code == 403
    assert client.post("/api/v1/review/claim", headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert client.post("/api/v1/review/claim", headers={"X-CSRF-Token": csrf}).status_code == 204
    # A session is no ingest token.
    assert client.post("/api/v1/listings", json=[], headers={"X-CSRF-Token": csrf}).status_code == 403
    assert client.post("/sign-out", data={"csrf_token": "forged"}).status_code == 403
    out = client.post("/sign-out", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/api/v1/stats").status_code == 401


def test_a_disabled_moderator_is_signed_out_at_once(client: TestClient, tokens: Tokens, db: Database) -> None:
    sign_in(client)
    with db.transaction() as session:
        disable_user(session, "alice")
    assert client.get("/review", follow_redirects=False).status_code == 303
    page = client.get("/sign-in")
    again = client.post(
        "/sign-in", data={"name": "alice", "password": PASSWORD, "csrf_token": csrf_of(page.text)}
    )
    assert again.status_code == 401


def test_sign_in_redirects_only_within_the_site(client: TestClient, tokens: Tokens) -> None:
    page = client.get("/sign-in")
    response = client.post(
        "/sign-in",
        data={
            "name": "bob",
            "password": PASSWORD,
            "csrf_token": csrf_of(page.text),
            "next": "//evil.example/",
        },
        follow_redirects=False,
    )
    assert response.headers["location"] == "/review"
