"""The API describes itself: a public OpenAPI description with a model for every body, every
status it answers, security schemes and stable operation ids; real answers match it."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from jsonschema import Draft202012Validator

from common.db import Database
from tests.fixtures.review import Tokens, add_flagged, bearer

OPERATIONS = {
    ("post", "/api/v1/listings"): "sendListings",
    ("get", "/api/v1/listings"): "listListings",
    ("get", "/api/v1/listings/{external_id}"): "getListing",
    ("patch", "/api/v1/listings/{external_id}"): "updateListing",
    ("delete", "/api/v1/listings/{external_id}"): "deleteListing",
    ("post", "/api/v1/review/claim"): "claimReviewItem",
    ("post", "/api/v1/review/{external_id}/decision"): "decideReviewItem",
    ("post", "/api/v1/review/{external_id}/undo"): "undoDecision",
    ("get", "/api/v1/review/history"): "listDecisions",
    ("get", "/api/v1/stats"): "getStats",
    ("get", "/api/v1/webhooks/deliveries"): "listWebhookDeliveries",
}


@pytest.fixture
def spec(client: TestClient) -> dict[str, Any]:
    response = client.get("/api/v1/openapi.json")  # no token: the description is public
    assert response.status_code == 200
    return response.json()


def test_the_description_is_public_and_complete(client: TestClient, spec: dict[str, Any]) -> None:
    redirect = client.get("/openapi.json", follow_redirects=False)
    assert redirect.status_code == 308 and redirect.headers["location"] == "/api/v1/openapi.json"
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "session"}
    found = {
        (method, path): op["operationId"] for path, ops in spec["paths"].items() for method, op in ops.items()
    }
    assert found == OPERATIONS
    for (method, path), _ in OPERATIONS.items():
        responses = spec["paths"][path][method]["responses"]
        assert {"401", "403"} <= set(responses), (method, path)
        for status, answer in responses.items():
            if status in ("204",):
                continue
            content = answer.get("content")
            assert content, (method, path, status)
            body = content.get("application/json") or content.get("application/problem+json")
            assert body and body["schema"] != {}, (method, path, status)
            if status >= "400":
                assert body["schema"] == {"$ref": "#/components/schemas/ProblemDetails"}, (
                    method,
                    path,
                    status,
                )
    ingest = spec["paths"]["/api/v1/listings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/ListingEvent"} in ingest["oneOf"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def matches(spec: dict[str, Any], response: Response, method: str, path: str) -> Response:
    """The answer's body validates against the description of its path, method and status."""
    answer = spec["paths"][path][method]["responses"][str(response.status_code)]
    if response.status_code == 204:
        assert "content" not in answer and not response.content
        return response
    kind = response.headers["content-type"].split(";")[0]
    schema = answer["content"][kind]["schema"]
    Draft202012Validator({**schema, "components": spec["components"]}).validate(response.json())
    return response


def test_real_answers_match_the_description(
    client: TestClient, spec: dict[str, Any], tokens: Tokens, db: Database
) -> None:
    ingest, alice = bearer(tokens.ingest), bearer(tokens.alice)
    listings = "/api/v1/listings"
    item = {"external_id": "sku-1", "image_url": "https://photos.example/1.jpg", "title": "Steel watch"}
    assert (
        matches(
            spec, client.post(listings, json=[item, {"external_id": "x"}], headers=ingest), "post", listings
        ).status_code
        == 202
    )
    assert (
        matches(
            spec, client.post(listings, json=[{"external_id": "x"}], headers=ingest), "post", listings
        ).status_code
        == 422
    )
    assert (
        matches(
            spec,
            client.post(listings, content=b"{}", headers={**ingest, "Content-Type": "text/plain"}),
            "post",
            listings,
        ).status_code
        == 415
    )
    assert matches(spec, client.post(listings, json=item), "post", listings).status_code == 401
    one = "/api/v1/listings/{external_id}"
    page = matches(spec, client.get(f"{listings}?limit=1", headers=ingest), "get", listings).json()
    assert len(page["listings"]) == 1 and page["has_more"] is False
    assert (
        matches(spec, client.get(f"{listings}?cursor=nope", headers=ingest), "get", listings).status_code
        == 422
    )
    assert matches(spec, client.get("/api/v1/listings/sku-1", headers=ingest), "get", one).status_code == 200
    assert matches(spec, client.get("/api/v1/listings/nope", headers=ingest), "get", one).status_code == 404

    add_flagged(db, [("b1", 0.4)], seller_category="Footwear", title="A boot")
    claim = "/api/v1/review/claim"
    assert matches(spec, client.post(claim, headers=alice), "post", claim).status_code == 200
    flagged = matches(spec, client.get("/api/v1/listings/b1", headers=ingest), "get", one).json()
    assert flagged["suggestion"]["needs_review"] is True
    decide = "/api/v1/review/{external_id}/decision"
    accepted = client.post("/api/v1/review/b1/decision", json={"action": "accept"}, headers=alice)
    assert matches(spec, accepted, "post", decide).status_code == 200
    again = client.post("/api/v1/review/b1/decision", json={"action": "accept"}, headers=alice)
    assert matches(spec, again, "post", decide).status_code == 409
    assert matches(spec, client.get("/api/v1/listings/b1", headers=ingest), "get", one).json()["decision"]
    history = "/api/v1/review/history"
    assert matches(spec, client.get(history, headers=alice), "get", history).json()["decisions"]
    undo = "/api/v1/review/{external_id}/undo"
    assert (
        matches(spec, client.post("/api/v1/review/b1/undo", headers=alice), "post", undo).status_code == 200
    )
    assert matches(spec, client.get(history, headers=alice), "get", history).status_code == 200
    stats = "/api/v1/stats"
    assert matches(spec, client.get(stats, headers=alice), "get", stats).status_code == 200
    assert matches(spec, client.get(stats, headers=ingest), "get", stats).status_code == 403
    client.post("/api/v1/review/b1/decision", json={"action": "accept"}, headers=alice)
    assert matches(spec, client.post(claim, headers=alice), "post", claim).status_code == 204
