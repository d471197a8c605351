"""`GET /api/v1/webhooks/deliveries`: an ingest token's view of its source's webhook delivery log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from common.moderation.accounts import Identity
from common.runtime import Runtime
from common.schema import DEFAULT_SOURCE_ID
from common.webhooks.deliveries import deliveries
from review.api_models import Model, problems
from review.auth import Ingest, runtime_of

router = APIRouter(prefix="/api/v1", tags=["webhooks"])
MAX_PAGE = 200


class WebhookDeliveryView(Model):
    id: int = Field(description="The `Vitrine-Delivery` header of its POSTs")
    subscription_id: int
    url: str
    external_id: str
    event: str = Field(
        description="listing.suggested, listing.needs_review, listing.reviewed or listing.failed"
    )
    status: Literal["pending", "delivered", "failed"]
    attempts: int = Field(description="POSTs made so far")
    last_status: int | None = Field(
        description="The receiver's last HTTP status; null when it never answered"
    )
    last_error: str | None
    created_at: datetime = Field(description="When the event happened")
    next_attempt_at: datetime | None = Field(description="When it is tried next, while pending")
    delivered_at: datetime | None


class WebhookDeliveryPage(Model):
    deliveries: list[WebhookDeliveryView] = Field(description="Newest first")
    next: int | None = Field(description="`before` for the next (older) page; null on the last")


def _page(
    runtime: Runtime, source_id: int, status: str | None, before: int | None, limit: int
) -> dict[str, Any]:
    with runtime.db.transaction() as session:
        rows = deliveries(session, source_id=source_id, status=status, before_id=before, limit=limit + 1)
    page = [
        {
            "id": row.id,
            "subscription_id": row.subscription_id,
            "url": row.url,
            "external_id": row.external_id,
            "event": row.event,
            "status": row.status,
            "attempts": row.attempts,
            "last_status": row.last_status,
            "last_error": row.last_error,
            "created_at": row.created_at,
            "next_attempt_at": row.next_attempt_at,
            "delivered_at": row.delivered_at,
        }
        for row in rows[:limit]
    ]
    return {"deliveries": page, "next": page[-1]["id"] if len(rows) > limit else None}


@router.get(
    "/webhooks/deliveries",
    operation_id="listWebhookDeliveries",
    summary="The source's webhook deliveries, newest first: tries, the last answer, the next try",
    response_model=WebhookDeliveryPage,
    responses=problems(401, 403, 422),
)
async def list_webhook_deliveries(
    request: Request,
    status: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
    before: Annotated[int | None, Query(ge=1, description="`next` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    identity: Identity = Ingest,
) -> dict[str, Any]:
    # An ingest token sees its own source's log only: its receivers, its listings.
    source_id = identity.source_id if identity.source_id is not None else DEFAULT_SOURCE_ID
    return await run_in_threadpool(_page, runtime_of(request), source_id, status, before, limit)
