"""The HTTP API's request and response bodies, as the OpenAPI description shows them.

Routes answer these models, so the description at `/api/v1/openapi.json` is what clients get
(tests/integration/review/test_openapi.py checks real answers against it). Fields a release
renamed are kept one more release, marked deprecated.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.listings.events import ListingEvent

Outcome = Literal["created", "requeued", "unchanged"]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors -------------------------------------------------------------------------------------


class FieldError(Model):
    pointer: str = Field(description="JSON pointer (RFC 6901) to the field in the body, or `/query/NAME`")
    code: str = Field(description="Stable, for programs")
    detail: str = Field(description="For people")


class ProblemDetails(Model):
    """RFC 9457 problem details, the body of every error (`application/problem+json`)."""

    type: str = Field(examples=["/problems/no_listing_accepted"])
    title: str
    status: int
    code: str = Field(description="Stable, for programs: the last part of `type`")
    detail: str = Field(description="For people; may change")
    request_id: str | None = Field(description="The answer's X-Request-ID, on the app's log lines too")
    errors: list[FieldError] | None = None


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route: each error status with its problem-details body."""
    why = {
        400: "Not JSON, not UTF-8, nested too deeply, or a string that is not text",
        401: "No token, or one that is unknown, revoked or expired",
        403: "A token of another scope, or a page's missing CSRF token",
        404: "No such resource",
        409: "A conflict with the resource's state (see `code`)",
        413: "Too many items, or a body over VITRINE_MAX_BODY_BYTES",
        415: "Not application/json",
        422: "Invalid: every field at fault in `errors`",
        429: "Too many requests (or long-polls) for this token: retry after `Retry-After` seconds",
    }
    return {
        status: {
            "model": ProblemDetails,
            "description": why[status],
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}
            },
        }
        # Any call may meet the rate limit (review.limits).
        for status in sorted({*statuses, 429})
    }


# --- listings -------------------------------------------------------------------------------------

# The request body of POST /listings: one listing or a list of up to 500. The route parses it
# itself (each item is answered on its own), so the union is described here.
INGEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/ListingEvent"},
                        {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/ListingEvent"},
                            "minItems": 1,
                            "maxItems": 500,
                        },
                    ]
                }
            }
        },
    }
}


class ItemError(Model):
    field: str
    message: str


class ItemResult(Model):
    index: int = Field(description="The item's place in the list sent (0 for a single object)")
    external_id: str | None
    outcome: Outcome | None = Field(None, description="For an accepted item")
    errors: list[FieldError] | None = Field(None, description="For a refused item: every error")
    error: ItemError | None = Field(None, deprecated=True, description="The first of `errors`")


class IngestAnswer(Model):
    accepted: int
    rejected: int
    results: list[ItemResult]


class SuggestionView(Model):
    category: str | None
    confidence: float
    alternatives: list[dict[str, Any]] | None = Field(description="The top 3: `{category, score}`")
    needs_review: bool
    review_reason: str | None
    signals: dict[str, dict[str, Any]] = Field(description="Each signal's own opinion: image, title")
    cluster: int
    clustering_version: int
    overlay_url: str | None = Field(description="Presigned, short-lived: the photo with its Grad-CAM heatmap")
    heatmap_url: str | None
    previous_overlay_key: str | None
    previous_heatmap_key: str | None
    previous_explain_target: str | None
    gradcam_url: str | None = Field(deprecated=True, description="The former name of `overlay_url`")


class DecisionView(Model):
    action: str
    category: str | None
    moderator: str
    at: str
    note: str | None


class ListingView(Model):
    source: str = Field(description="The source (marketplace, storefront) the listing belongs to")
    external_id: str = Field(description="The source's own id of the listing, unique within the source")
    status: Literal["queued", "embedded", "suggested", "reviewed", "failed"]
    title: str | None
    seller_category: str | None
    failure_reason: str | None
    failure_detail: str | None
    suggestion: SuggestionView | None
    decision: DecisionView | None
    updated_at: str = Field(description="When its status, photo or decision last changed")
    pending_reason: str | None = Field(None, description="Why an embedded listing has no suggestion yet")


class ListingPage(Model):
    listings: list[ListingView]
    next: str | None = Field(description="The cursor of the next page (`?cursor=`); keep it to ask later")
    has_more: bool


# --- review -------------------------------------------------------------------------------------


class Claimed(Model):
    source: str
    external_id: str
    lease_expires_at: str


class DecisionMade(Model):
    id: int
    source: str
    external_id: str
    action: str
    category: str | None


class UndoMade(Model):
    id: int
    source: str
    external_id: str
    reverts: int | None


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: int
    external_id: str
    title: str | None
    moderator: str
    action: str
    from_: str | None = Field(alias="from", serialization_alias="from")
    to: str | None
    confidence: float | None
    clustering_version: int | None
    note: str | None
    reverts: int | None
    reverted_by: int | None
    at: str


class HistoryPage(Model):
    decisions: list[HistoryEntry]
    next: int | None = Field(None, description="`?before=` of the next page")
    has_more: bool = False


class Stats(BaseModel):
    """The dashboard's figures; their inner shapes follow the dashboard and may grow."""

    model_config = ConfigDict(extra="allow")

    waiting: dict[str, Any]
    decisions_per_hour: list[dict[str, Any]]
    clustering_versions: list[dict[str, Any]]
    current_clusters: list[dict[str, Any]]
    labels: dict[str, int]
    queue_depths: dict[str, int | None]
    broker_error: str | None = None


__all__ = ["ListingEvent"]
