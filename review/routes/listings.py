"""`/api/v1/listings`: marketplaces send listings and read what became of them."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from common.delivery.outbox import send_listings
from common.delivery.publisher import BROKER_ERRORS
from common.listings.changes import ListingChanges, change_listing, delete_listing
from common.listings.events import ListingEvent, publish_listings, refusal
from common.listings.views import MAX_WAIT, WAIT_POLL, Cursor, ListingFilter, listing_page, listing_view
from common.moderation.accounts import Identity
from common.object_store import STORAGE_ERRORS, overlay_url
from common.runtime import Runtime
from common.schema import DEFAULT_SOURCE_ID, TERMINAL_STATUSES, ListingStatus
from common.sources.registry import AmbiguousListing
from common.suggestions.corpus import cold_start
from review.api_models import INGEST_BODY, IngestAnswer, ListingPage, ListingView, problems
from review.auth import Ingest, OutsideScope, Reader, runtime_of, source_scope
from review.idempotency import once
from review.limits import Limits
from review.problems import Problem, field_errors, pointer, read_json

router = APIRouter(prefix="/api/v1", tags=["listings"])
# An ingest token sees its own source only (naming another answers as if absent); a moderator
# sees every source, and names one where two sources share an external id.
SOURCE = Query(max_length=100, description="The listing's source (moderators; an ingest token's is its own)")
log = logging.getLogger(__name__)
MAX_ITEMS = 500


def _validate(index: int | None, item: Any) -> ListingEvent | dict[str, Any]:
    """The item as a `ListingEvent`, or its result with every error, each naming its field.

    `index`: the item's place in a list (None for a single object), the pointers' first part.
    """
    at = () if index is None else (index,)
    if not isinstance(item, dict):
        errors = [{"pointer": pointer(at), "code": "not_an_object", "detail": "must be a JSON object"}]
        return _refused(index, None, errors)
    try:
        return ListingEvent.model_validate(item)
    except ValidationError as error:
        external_id = item.get("external_id") if isinstance(item.get("external_id"), str) else None
        return _refused(index, external_id, field_errors(error.errors(), at))


def _refused(index: int | None, external_id: str | None, errors: list[dict[str, str]]) -> dict[str, Any]:
    parts = errors[0]["pointer"].split("/")[1:]
    field = ".".join(parts[1:] if index is not None else parts) or "item"
    return {
        "index": index or 0,
        "external_id": external_id,
        "errors": errors,
        # The first error alone, as answered before `errors`; kept for one more release.
        "error": {"field": field, "message": errors[0]["detail"]},
    }


@router.post(
    "/listings",
    status_code=202,
    operation_id="sendListings",
    summary="Send one listing or a list of up to 500",
    response_model=IngestAnswer,
    response_model_exclude_none=True,
    openapi_extra=INGEST_BODY,
    responses=problems(400, 401, 403, 413, 415, 422),
)
async def post_listings(request: Request, identity: Identity = Ingest) -> Response:
    """Each item `{external_id, image_url, seller_category?, title?}` is validated like `ListingEvent`;
    valid ones are recorded and queued, bad ones answered with every error, in order. 202 when
    at least one was accepted; 422 (problem details, every item's errors) when none was."""
    runtime = runtime_of(request)
    body = await read_json(request, runtime.settings.review.max_body_bytes)

    async def ingest() -> Response:
        source_id = identity.source_id if identity.source_id is not None else DEFAULT_SOURCE_ID
        return JSONResponse(await _ingest(request, runtime, body, source_id), status_code=202)

    # The bytes as sent (`read_json` keeps them): a retry's fingerprint is of the same bytes.
    return await once(request, request.state.raw_body, ingest)


async def _ingest(request: Request, runtime: Runtime, body: Any, source_id: int) -> dict[str, Any]:
    single = not isinstance(body, list)
    items = [body] if single else body
    if len(items) > MAX_ITEMS:
        raise Problem(
            413, "too_many_listings", f"body: at most {MAX_ITEMS} listings per request, got {len(items)}"
        )
    if not items:
        raise Problem(
            422,
            "empty_list",
            "body: an empty list",
            [{"pointer": "", "code": "empty_list", "detail": "an empty list"}],
        )
    results: list[dict[str, Any]] = []
    accepted: list[tuple[int, ListingEvent]] = []
    for index, item in enumerate(items):
        checked = _validate(None if single else index, item)
        if isinstance(checked, dict):
            results.append(checked)
            continue
        refused = refusal(checked, runtime.settings)
        if refused is not None:
            at = () if single else (index,)
            errors = [
                {"pointer": pointer([*at, refused.field]), "code": "refused", "detail": refused.message}
            ]
            results.append(_refused(None if single else index, checked.external_id, errors))
            continue
        accepted.append((index, checked))
    counter = request.app.state.metrics.listings
    if not accepted:
        counter.labels("rejected").inc(len(items))
        errors = [error for result in results for error in result["errors"]]
        detail = f"no listing accepted: {len(errors)} error(s) in {len(items)} item(s)"
        raise Problem(422, "no_listing_accepted", detail, errors)
    published = await run_in_threadpool(
        publish_listings, runtime, [event for _, event in accepted], source_id
    )
    results += [
        {"index": index, "external_id": p.external_id, "outcome": p.outcome}
        for (index, _), p in zip(accepted, published, strict=True)
    ]
    results.sort(key=lambda r: r["index"])
    for result in results:
        counter.labels(result.get("outcome", "rejected")).inc()
    return {
        "accepted": len(accepted),
        "rejected": len(items) - len(accepted),
        "results": results,
    }


def _with_urls(runtime: Runtime, view: dict[str, Any]) -> dict[str, Any]:
    """Object keys become short-lived presigned URLs (the keys themselves are internal)."""
    view = dict(view)
    view.pop("id", None)
    view.pop("image_url", None)
    suggestion = view.get("suggestion")
    if suggestion is not None:
        suggestion = dict(suggestion)
        for key_field, url_field in (("overlay_key", "overlay_url"), ("heatmap_key", "heatmap_url")):
            suggestion[url_field] = overlay_url(runtime.store, runtime.settings, suggestion.pop(key_field))
        # The field's name before this release, answered for one more release.
        suggestion["gradcam_url"] = suggestion["overlay_url"]
        view["suggestion"] = suggestion
    return view


@router.get(
    "/listings",
    operation_id="listListings",
    summary="Listings in the order they last changed, a page at a time",
    response_model=ListingPage,
    responses=problems(401, 403, 422),
)
async def list_listings(
    request: Request,
    status: Annotated[ListingStatus | None, Query(description="Only listings in this state")] = None,
    needs_review: Annotated[
        bool | None, Query(description="Only flagged (true) or unflagged (false)")
    ] = None,
    updated_since: Annotated[
        datetime | None, Query(description="Only listings changed at or after this")
    ] = None,
    cursor: Annotated[str | None, Query(max_length=200, description="`next` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ITEMS)] = 100,
    source: Annotated[str | None, SOURCE] = None,
    identity: Identity = Reader,
) -> dict[str, Any]:
    """Reconcile with Vitrine: read every page, keep the last `next`, and ask again with it later
    for what changed since (a status, a photo, a decision)."""
    after = None
    if cursor is not None:
        try:
            after = Cursor.decode(cursor)
        except ValueError:
            raise Problem(
                422,
                "invalid_cursor",
                "cursor: not one this API handed out",
                [
                    {
                        "pointer": "/query/cursor",
                        "code": "invalid_cursor",
                        "detail": "not one this API handed out",
                    }
                ],
            ) from None
    if updated_since is not None and updated_since.tzinfo is None:
        updated_since = updated_since.replace(tzinfo=UTC)
    runtime = runtime_of(request)

    def read() -> tuple[list[dict[str, Any]], Cursor | None]:
        with runtime.db.transaction() as session:
            try:
                source_id = source_scope(session, identity, source)
            except OutsideScope:
                return [], None  # a source the caller may not see has, to it, no listings
            where = ListingFilter(status, needs_review, updated_since, source_id)
            return listing_page(session, where, after, limit)

    views, following = await run_in_threadpool(read)
    return {
        "listings": [_with_urls(runtime, view) for view in views],
        "next": following.encode() if following is not None else None,
        "has_more": following is not None,
    }


@router.get(
    "/listings/{external_id:path}",
    operation_id="getListing",
    summary="A listing's status, suggestion and decision",
    response_model=ListingView,
    responses=problems(401, 403, 404, 409, 422),
)
async def get_listing(
    request: Request,
    external_id: str,
    wait: float = Query(0, ge=0, le=MAX_WAIT, description="Seconds to wait for a terminal state."),
    source: Annotated[str | None, SOURCE] = None,
    identity: Identity = Reader,
) -> dict[str, Any]:
    runtime = runtime_of(request)
    scope = await run_in_threadpool(_scope, runtime, identity, source, external_id)
    view = await run_in_threadpool(_read_view, runtime, external_id, scope)
    if wait > 0 and view is not None and view["status"] not in TERMINAL_STATUSES:
        limits: Limits = request.app.state.limits
        async with limits.long_poll(request):
            deadline = time.monotonic() + wait
            while (
                view is not None and view["status"] not in TERMINAL_STATUSES and time.monotonic() < deadline
            ):
                await asyncio.sleep(min(WAIT_POLL, max(0.0, deadline - time.monotonic())))
                # A fresh short transaction per look: no connection is held while it is awaited.
                view = await run_in_threadpool(_read_view, runtime, external_id, scope)
    if view is None:
        raise _not_found(external_id)
    return _with_urls(runtime, view)


def _scope(runtime: Runtime, identity: Identity, source: str | None, external_id: str) -> int | None:
    with runtime.db.transaction() as session:
        try:
            return source_scope(session, identity, source)
        except OutsideScope:
            raise _not_found(external_id) from None


def _read_view(runtime: Runtime, external_id: str, source_id: int | None) -> dict[str, Any] | None:
    with runtime.db.transaction() as session:
        try:
            view = listing_view(session, external_id, source_id)
        except AmbiguousListing as error:
            raise Problem(
                409,
                "ambiguous_listing",
                str(error),
                [{"pointer": "/query/source", "code": "ambiguous_listing", "detail": str(error)}],
            ) from None
        if view is not None:
            view["pending_reason"] = pending_reason(session, runtime, view)
        return view


def pending_reason(session: Session, runtime: Runtime, view: dict[str, Any]) -> str | None:
    """Why an embedded listing has no suggestion yet; None for every other listing."""
    if view["status"] != ListingStatus.embedded or view["suggestion"] is not None:
        return None
    settings = runtime.settings
    waiting = cold_start(session, settings.backbone.model, settings.refit.first_after)
    if waiting is None:
        return "embedded; its suggestion is written by the refit now running"
    return waiting.reason


@router.patch(
    "/listings/{external_id:path}",
    operation_id="updateListing",
    summary="Change a listing's title or seller category (null clears one)",
    response_model=ListingView,
    responses=problems(400, 401, 403, 404, 413, 415, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ListingChanges"}}},
        }
    },
)
async def patch_listing(request: Request, external_id: str, identity: Identity = Ingest) -> dict[str, Any]:
    """The fields sent change, the others stay. A change is a new revision: the listing is scored
    again (from its photo's stored vector: the photo is not fetched or embedded again) and, if it
    needs one, reviewed again; a moderator's decision on the old text no longer stands."""
    runtime = runtime_of(request)
    body = await read_json(request, runtime.settings.review.max_body_bytes)
    if not isinstance(body, dict):
        raise Problem(
            422,
            "not_an_object",
            "body: must be a JSON object",
            [{"pointer": "", "code": "not_an_object", "detail": "must be a JSON object"}],
        )
    try:
        changes = ListingChanges.model_validate(body)
    except ValidationError as error:
        errors = field_errors(error.errors())
        raise Problem(
            422, "invalid", "; ".join(f"{e['pointer']}: {e['detail']}" for e in errors), errors
        ) from None

    source_id = identity.source_id if identity.source_id is not None else DEFAULT_SOURCE_ID

    def change() -> bool:
        with runtime.db.transaction() as session:
            changed = change_listing(session, external_id, changes, source_id)
        if changed is None:
            return False
        if changed.queued:
            # Recorded and unmarked if the broker is away: the sweep sends it once it answers.
            with suppress(*BROKER_ERRORS):
                send_listings(runtime.db, runtime.publisher, [changed.listing_id])
        return True

    if not await run_in_threadpool(change):
        raise _not_found(external_id)
    view = await run_in_threadpool(_read_view, runtime, external_id, source_id)
    if view is None:  # removed meanwhile
        raise _not_found(external_id)
    return _with_urls(runtime, view)


@router.delete(
    "/listings/{external_id:path}",
    operation_id="deleteListing",
    summary="Remove a listing, everything made from it and its objects",
    status_code=204,
    response_model=None,
    responses={204: {"description": "Removed"}, **problems(401, 403, 404)},
)
async def delete_listing_route(request: Request, external_id: str, identity: Identity = Ingest) -> Response:
    """Its rows (suggestion, embedding, decisions, claim) go with it; so do its overlays and, when
    it was uploaded to our images bucket and no other listing shows it, its photo."""
    runtime = runtime_of(request)
    store = runtime.settings.store
    source_id = identity.source_id if identity.source_id is not None else DEFAULT_SOURCE_ID

    def remove() -> list[tuple[str, str]] | None:
        with runtime.db.transaction() as session:
            return delete_listing(session, external_id, store.images_bucket, store.overlay_bucket, source_id)

    objects = await run_in_threadpool(remove)
    if objects is None:
        raise _not_found(external_id)
    by_bucket: dict[str, list[str]] = {}
    for bucket, key in objects:
        by_bucket.setdefault(bucket, []).append(key)
    for bucket, keys in by_bucket.items():
        try:
            await run_in_threadpool(runtime.store.delete_keys, bucket, keys)
        except STORAGE_ERRORS as error:
            # The rows are gone; the objects are no one's and unreachable (keys are not guessable).
            log.warning("objects of deleted listing %r left in %s: %s", external_id, bucket, error)
    return Response(status_code=204)


def _not_found(external_id: str) -> Problem:
    return Problem(
        404,
        "listing_not_found",
        f"external_id: no listing {external_id!r}",
        [{"pointer": "/path/external_id", "code": "not_found", "detail": "no such listing"}],
    )
