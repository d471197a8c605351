"""`/api/v1/review` and `/api/v1/stats`: claim, decide, undo, history, dashboard figures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.delivery.queues import QUEUES
from common.moderation import decisions, history, queue
from common.moderation.accounts import Identity
from common.runtime import Runtime
from common.schema import Listing, Source
from review.api_models import Claimed, DecisionMade, HistoryPage, Stats, UndoMade, problems
from review.auth import Reviewer, runtime_of
from review.idempotency import once
from review.problems import Problem

router = APIRouter(prefix="/api/v1", tags=["review"])
# Moderators work for every source: a listing is named by its external id, and by its source
# too where two sources share that id (409 `ambiguous_listing` otherwise).
SOURCE = Query(max_length=100, description="The listing's source, where its external id is not enough")
T = TypeVar("T")
ReasonName = Literal["low_confidence", "seller_disagrees", "audit_sample"]


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["accept", "override", "skip"]
    category: str | None = Field(None, min_length=1, max_length=200)
    note: str | None = Field(None, max_length=decisions.MAX_NOTE)


def in_transaction(runtime: Runtime, work: Callable[[Session], T]) -> T:
    """Run `work` in one transaction; a `ReviewError` rolls it back and becomes its HTTP answer."""
    try:
        with runtime.db.transaction() as session:
            return work(session)
    except decisions.ReviewError as error:
        where = (
            [{"pointer": f"/{error.field}", "code": error.code, "detail": error.message}]
            if error.field
            else []
        )
        raise Problem(error.status, error.code, error.message, where) from None


# An external id may hold any character, `/` included: clients percent-encode it in the path
# (`a%2Fb`), and the `:path` parameters take it whole.


@router.post(
    "/review/claim",
    operation_id="claimReviewItem",
    summary="Claim the next item waiting for review",
    response_model=None,
    responses={
        200: {"model": Claimed, "description": "Leased to you until `lease_expires_at`"},
        204: {"description": "Nothing waits"},
        **problems(401, 403, 422),
    },
)
async def claim(
    request: Request,
    category: str | None = Query(None, max_length=200),
    reason: Annotated[ReasonName | None, Query()] = None,
    min_confidence: float | None = Query(None, ge=0, le=1),
    max_confidence: float | None = Query(None, ge=0, le=1),
    identity: Identity = Reviewer,
) -> dict[str, Any] | Response:
    runtime = runtime_of(request)
    lease = runtime.settings.review.review_lease_seconds
    filters = queue.Filters(category or None, reason, min_confidence, max_confidence)

    def take(session: Session) -> dict[str, Any] | None:
        claimed = queue.claim(session, identity.name, lease, filters)
        if claimed is None:
            return None
        return {
            "source": _source_of(session, claimed.listing_id),
            "external_id": claimed.external_id,
            "lease_expires_at": claimed.expires_at.isoformat(),
        }

    answer = await run_in_threadpool(in_transaction, runtime, take)
    return Response(status_code=204) if answer is None else answer


def _source_of(session: Session, listing_id: int) -> str:
    return str(
        session.execute(
            select(Source.name).join(Listing, Listing.source_id == Source.id).where(Listing.id == listing_id)
        ).scalar_one()
    )


@router.post(
    "/review/{external_id:path}/decision",
    operation_id="decideReviewItem",
    summary="Accept, override or skip a claimed item",
    response_model=DecisionMade,
    responses=problems(400, 401, 403, 404, 409, 422),
)
async def decision(
    request: Request,
    external_id: str,
    body: DecisionIn,
    source: Annotated[str | None, SOURCE] = None,
    identity: Identity = Reviewer,
) -> Response:
    runtime = runtime_of(request)

    def record(session: Session) -> dict[str, Any]:
        row = decisions.decide(
            session,
            identity.name,
            external_id,
            body.action,
            body.category,
            body.note,
            decisions.named_source(session, source),
        )
        return {
            "id": row.id,
            "source": _source_of(session, row.listing_id),
            "external_id": external_id,
            "action": row.action,
            "category": row.category,
        }

    async def decide() -> Response:
        return JSONResponse(await run_in_threadpool(in_transaction, runtime, record))

    # A retried decision (the answer was lost) gets the first answer, not "already decided".
    return await once(request, await request.body(), decide)


@router.post(
    "/review/{external_id:path}/undo",
    operation_id="undoDecision",
    summary="Revert your last decision on an item",
    response_model=UndoMade,
    responses=problems(401, 403, 404, 409),
)
async def undo(
    request: Request,
    external_id: str,
    source: Annotated[str | None, SOURCE] = None,
    identity: Identity = Reviewer,
) -> dict[str, Any]:
    runtime = runtime_of(request)
    lease = runtime.settings.review.review_lease_seconds

    def revert(session: Session) -> dict[str, Any]:
        row = decisions.undo(
            session, identity.name, external_id, lease, decisions.named_source(session, source)
        )
        source_name = _source_of(session, row.listing_id)
        return {"id": row.id, "source": source_name, "external_id": external_id, "reverts": row.reverts_id}

    return await run_in_threadpool(in_transaction, runtime, revert)


@router.get(
    "/review/history",
    operation_id="listDecisions",
    summary="Decisions, newest first",
    response_model=HistoryPage,
    responses=problems(401, 403, 422),
)
async def decision_history(
    request: Request,
    moderator_name: str | None = Query(None, alias="moderator", max_length=100),
    category: str | None = Query(None, max_length=200),
    limit: int = Query(100, ge=1, le=history.HISTORY_LIMIT),
    before: int | None = Query(None, ge=1, description="Only decisions older than this id (paging)."),
    _: Identity = Reviewer,
) -> dict[str, Any]:
    runtime = runtime_of(request)
    rows = await run_in_threadpool(
        in_transaction, runtime, lambda s: history.history(s, moderator_name, category, limit + 1, before)
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return {"decisions": rows, "next": rows[-1]["id"] if more else None, "has_more": more}


def dashboard_figures(runtime: Runtime) -> dict[str, Any]:
    """The dashboard's figures: from Postgres, and the broker's queue depths (None if it is away)."""
    with runtime.db.transaction() as session:
        figures = history.stats(session)
    depths: dict[str, int | None] = {}
    for name in QUEUES:
        try:
            depths[name] = runtime.publisher.queue_depth(name)
        except RedisError as error:  # the broker away: the page still shows the rest
            depths[name] = None
            figures["broker_error"] = str(error)
    figures["queue_depths"] = depths
    return figures


@router.get(
    "/stats",
    operation_id="getStats",
    summary="Review queue, decisions, clustering quality, queue depths",
    response_model=Stats,
    responses=problems(401, 403),
)
async def stats(request: Request, _: Identity = Reviewer) -> dict[str, Any]:
    return await run_in_threadpool(dashboard_figures, runtime_of(request))
