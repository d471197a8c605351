"""One error format: every error of the app is RFC 9457 problem details, with a stable code, the
fields at fault as JSON pointers and the request id; malformed input is a 4xx, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select

from common.db import Database
from common.schema import Listing
from tests.fixtures.review import Tokens, bearer

JSON = {"Content-Type": "application/json"}


def problem(response: Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["code"], body["type"]) == (status, code, f"/problems/{code}")
    assert body["title"] and body["detail"]
    # The id on the request's log lines and in its header, so a report can be traced.
    assert body["request_id"] and body["request_id"] == response.headers["x-request-id"]
    for error in body.get("errors", []):
        assert set(error) == {"pointer", "code", "detail"}
        assert not error["detail"].startswith("Value error")
    return body


def _count(db: Database) -> int:
    with db.transaction() as session:
        return session.execute(select(func.count()).select_from(Listing)).scalar_one()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json at all", "malformed_json"),
        (b'{"external_id": "a\x00b", "image_url": "https://photos.example/1.jpg"', "malformed_json"),
        (b'{"external_id": "\\ud800", "image_url": "https://photos.example/1.jpg"}', "invalid_text"),
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (
            b'{"external_id": ' + b"9" * 5000 + b', "image_url": "https://photos.example/1.jpg"}',
            "malformed_json",
        ),
        (b"\xff\xfe{}", "malformed_json"),
    ],
    ids=["not-json", "nul-byte", "lone-surrogate", "deep", "huge-number", "not-utf8"],
)
def test_malformed_bodies_are_a_400_never_a_500(
    client: TestClient, tokens: Tokens, db: Database, body: bytes, code: str
) -> None:
    response = client.post("/api/v1/listings", content=body, headers={**bearer(tokens.ingest), **JSON})
    problem(response, 400, code)
    assert _count(db) == 0


def test_a_lone_surrogate_names_its_field(client: TestClient, tokens: Tokens) -> None:
    body = b'[{"external_id": "ok", "image_url": "https://photos.example/1.jpg", "title": "\\udfff"}]'
    answer = problem(
        client.post("/api/v1/listings", content=body, headers={**bearer(tokens.ingest), **JSON}),
        400,
        "invalid_text",
    )
    assert answer["errors"][0]["pointer"] == "/0/title"


def test_a_lone_surrogate_in_a_decision_is_refused_with_every_error(
    client: TestClient, tokens: Tokens
) -> None:
    body = b'{"category": "Watches", "note": "\\ud800"}'
    response = client.post(
        "/api/v1/review/b1/decision", content=body, headers={**bearer(tokens.alice), **JSON}
    )
    answer = problem(response, 422, "invalid")
    assert {e["pointer"] for e in answer["errors"]} == {"/action", "/note"}


def test_wrong_content_types_are_refused(client: TestClient, tokens: Tokens, db: Database) -> None:
    item = b'{"external_id": "a", "image_url": "https://photos.example/1.jpg"}'
    for kind in ("text/plain", "application/x-www-form-urlencoded", ""):
        headers = {**bearer(tokens.ingest), "Content-Type": kind}
        problem(client.post("/api/v1/listings", content=item, headers=headers), 415, "unsupported_media_type")
    assert _count(db) == 0


def test_a_body_over_the_limit_is_refused_before_it_is_parsed(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    huge = (
        b'[{"external_id": "a", "image_url": "https://photos.example/1.jpg", "title": "'
        + b"x" * (5 << 20)
        + b'"}]'
    )
    answer = problem(
        client.post("/api/v1/listings", content=huge, headers={**bearer(tokens.ingest), **JSON}),
        413,
        "too_large",
    )
    assert "bytes" in answer["detail"]
    assert _count(db) == 0


def test_every_error_of_every_item_is_reported_and_none_accepted_is_not_a_202(
    client: TestClient, tokens: Tokens, db: Database
) -> None:
    items = [
        {"image_url": "ftp://photos.example/1.jpg", "price": 3},  # three errors
        {"external_id": "other-bucket", "image_url": "s3://someone-elses/photo.jpg"},
        "not an object",
    ]
    answer = problem(
        client.post("/api/v1/listings", json=items, headers=bearer(tokens.ingest)), 422, "no_listing_accepted"
    )
    pointers = [error["pointer"] for error in answer["errors"]]
    assert {"/0/external_id", "/0/image_url", "/0/price", "/1/image_url", "/2"} <= set(pointers), pointers
    assert _count(db) == 0
    # One good item among them: accepted (202), the others answered with all their errors.
    mixed = client.post(
        "/api/v1/listings",
        json=[*items, {"external_id": "ok", "image_url": "https://photos.example/2.jpg"}],
        headers=bearer(tokens.ingest),
    )
    assert mixed.status_code == 202
    first = mixed.json()["results"][0]
    assert {e["pointer"] for e in first["errors"]} == {"/0/external_id", "/0/image_url", "/0/price"}
    single = client.post("/api/v1/listings", json={"external_id": "x"}, headers=bearer(tokens.ingest))
    assert [e["pointer"] for e in problem(single, 422, "no_listing_accepted")["errors"]] == ["/image_url"]


def test_every_status_answers_problem_details(client: TestClient, tokens: Tokens) -> None:
    problem(client.get("/api/v1/listings/nope"), 401, "unauthorized")
    problem(client.get("/api/v1/listings/nope", headers=bearer(tokens.ingest)), 404, "listing_not_found")
    invalid = problem(client.get("/api/v1/listings/x?wait=99", headers=bearer(tokens.ingest)), 422, "invalid")
    assert invalid["errors"][0]["pointer"] == "/query/wait"
    problem(client.get("/api/v1/no-such-route", headers=bearer(tokens.ingest)), 404, "not_found")
    problem(
        client.post("/api/v1/review/b1/decision", json={}, headers=bearer(tokens.ingest)), 403, "forbidden"
    )
    many = [{"external_id": f"x{i}", "image_url": "https://photos.example/x.jpg"} for i in range(501)]
    problem(
        client.post("/api/v1/listings", json=many, headers=bearer(tokens.ingest)), 413, "too_many_listings"
    )
