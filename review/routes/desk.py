"""The moderators' desk: the review page, and the calls its script makes to stay ahead of the moderator.

The page works as plain forms (a decision posts, the answer redirects to the next item). With its
script (`static/review.js`) it keeps a few claimed items ready in the page, each rendered here by
the same `_item.html` the page uses, so a key shows the next item at once and the decision is
posted in the background. The script renews the leases of what it keeps while the desk is open
and gives them back when it closes or its filters change.

Every call here takes form fields (a `fetch` sends `URLSearchParams`, `navigator.sendBeacon` a
`FormData`) with the session's CSRF token; those that the script makes answer JSON when asked
for it (`Accept: application/json`), the forms a redirect.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from common.listings.views import category_examples, labelled_neighbours, view_of
from common.moderation import decisions, groups, queue
from common.moderation.accounts import Identity
from common.moderation.queue import Filters, Lease
from common.object_store import overlay_url
from common.runtime import Runtime
from review.auth import CSRF_FIELD, Moderator, check_form_csrf, runtime_of, sessions_of
from review.routes.pages import photo_url, render, templates

router = APIRouter(include_in_schema=False)
Reason = Literal["low_confidence", "seller_disagrees", "audit_sample"]
# Items the desk keeps ready beyond the one shown; more would hold leases others could use.
MAX_AHEAD = 5


def _filters(
    category: str | None, reason: str | None, min_confidence: float | None, max_confidence: float | None
) -> Filters:
    return Filters(category or None, reason or None, min_confidence, max_confidence)


def _filter_query(filters: Filters) -> dict[str, str]:
    pairs = {
        "category": filters.category,
        "reason": filters.reason,
        "min_confidence": filters.min_confidence,
        "max_confidence": filters.max_confidence,
    }
    return {k: str(v) for k, v in pairs.items() if v is not None}


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _item(runtime: Runtime, session: Session, lease: Lease) -> dict[str, Any] | None:
    """What `_item.html` shows of one claimed item."""
    item = view_of(session, lease.listing_id)
    suggestion = item["suggestion"] or {}
    stale = (
        {k: suggestion.get(f"previous_{k}") for k in ("overlay_key", "heatmap_key", "explain_target")}
        if suggestion.get("heatmap_key") is None
        else {}
    )
    candidates = [a["category"] for a in suggestion.get("alternatives") or []][:3]
    examples = category_examples(session, item["id"], candidates)
    neighbours = labelled_neighbours(session, item["id"])
    store, settings = runtime.store, runtime.settings
    return {
        "item": item,
        "lease_expires_at": lease.expires_at,
        "photo": photo_url(runtime, item["image_url"]),
        "heatmap": overlay_url(store, settings, suggestion.get("heatmap_key") or stale.get("heatmap_key")),
        "overlay": overlay_url(store, settings, suggestion.get("overlay_key") or stale.get("overlay_key")),
        # The earlier decision's overlay, on view until this one's is made: the target it explains.
        "overlay_explains": (stale.get("explain_target") or "another category")
        if stale.get("heatmap_key")
        else None,
        "neighbours": [{**n, "photo": photo_url(runtime, n["image_url"])} for n in neighbours],
        "examples": {
            category: [{**e, "photo": photo_url(runtime, e["image_url"])} for e in rows]
            for category, rows in examples.items()
        },
    }


def _progress(session: Session, moderator: str) -> dict[str, Any]:
    """The counts above the desk: what waits for this moderator, their pace and the time left."""
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    waiting = queue.waiting_counts(session, moderator)
    total = sum(waiting["per_reason"].values())
    rate = decisions.decided_since(session, moderator, now - timedelta(hours=1))
    last = decisions.last_decision(session, moderator)
    return {
        "waiting": total,
        "per_reason": waiting["per_reason"],
        "skipped_by_you": waiting["skipped"]["by_you"],
        "decided_today": decisions.decided_since(session, moderator, midnight),
        "per_hour": rate,
        # At this moderator's pace of the last hour; None before they have one.
        "minutes_left": round(60 * total / rate) if rate else None,
        "last": None
        if last is None
        else {k: last[k] for k in ("source", "external_id", "action", "category", "title") if k in last},
    }


def _members(runtime: Runtime, session: Session, members: list[Lease]) -> list[dict[str, Any]]:
    """What the desk shows of a group's members: a thumbnail each, and what they are."""
    shown = []
    for member in members:
        view = view_of(session, member.listing_id)
        shown.append(
            {
                "external_id": member.external_id,
                "title": view["title"],
                "photo": photo_url(runtime, view["image_url"]),
                "confidence": (view["suggestion"] or {}).get("confidence"),
            }
        )
    return shown


def _claim_items(
    runtime: Runtime, moderator: str, filters: Filters, exclude: list[str], n: int
) -> list[tuple[Lease, dict[str, Any]]]:
    """Up to `n` items, each with the look-alikes decided with it (`groups`), all leased."""
    lease_seconds = runtime.settings.review.review_lease_seconds
    claimed: list[tuple[Lease, dict[str, Any]]] = []
    shown = list(exclude)
    for _ in range(n):
        with runtime.db.transaction() as session:
            lease = queue.claim(session, moderator, lease_seconds, filters, shown)
            if lease is None:
                break
            members = groups.group(session, moderator, lease, lease_seconds, shown)
        shown += [lease.external_id, *(m.external_id for m in members)]
        with runtime.db.transaction() as session:
            context = _item(runtime, session, lease)
            if context is not None:
                context["group"] = _members(runtime, session, members)
        if context is not None:
            claimed.append((lease, context))
    return claimed


def _page_context(runtime: Runtime, moderator: str, filters: Filters) -> dict[str, Any]:
    claimed = _claim_items(runtime, moderator, filters, [], 1)
    with runtime.db.transaction() as session:
        progress = _progress(session, moderator)
        categories = sorted(queue.known_categories(session))
    context: dict[str, Any] = {
        "progress": progress,
        "categories": categories,
        "filters": filters,
        "lease_seconds": runtime.settings.review.review_lease_seconds,
    }
    if claimed:
        context.update(claimed[0][1])
    return context


@router.get("/review")
async def review_page(
    request: Request,
    category: str | None = Query(None, max_length=200),
    reason: Annotated[Reason | None, Query()] = None,
    min_confidence: float | None = Query(None, ge=0, le=1),
    max_confidence: float | None = Query(None, ge=0, le=1),
    identity: Identity = Moderator,
) -> HTMLResponse:
    runtime = runtime_of(request)
    filters = _filters(category, reason, min_confidence, max_confidence)
    context = await run_in_threadpool(_page_context, runtime, identity.name, filters)
    # A refused decision's message, carried once in the session rather than in the URL.
    sessions = sessions_of(request)
    data = sessions.read(request)
    notice = data.pop("notice", None)
    response = render(request, "review.html", {**context, "identity": identity, "notice": notice})
    if notice is not None:
        sessions.write(request, response, data)
    return response


@router.post("/review/next")
async def next_items(
    request: Request,
    n: int = Form(1, ge=1, le=MAX_AHEAD),
    exclude: Annotated[list[str], Form()] = [],  # noqa: B006 (FastAPI copies it)
    category: str | None = Form(None, max_length=200),
    reason: Annotated[Reason | None, Form()] = None,
    min_confidence: float | None = Form(None, ge=0, le=1),
    max_confidence: float | None = Form(None, ge=0, le=1),
    csrf_token: str = Form(""),
    identity: Identity = Moderator,
) -> JSONResponse:
    """Claim up to `n` more items, not those the desk already holds (`exclude`), rendered."""
    check_form_csrf(request, csrf_token)
    runtime = runtime_of(request)
    filters = _filters(category, reason, min_confidence, max_confidence)
    claimed = await run_in_threadpool(_claim_items, runtime, identity.name, filters, exclude[:50], n)
    csrf = sessions_of(request).read(request).get("csrf", "")
    items = [
        {
            "external_id": lease.external_id,
            "members": [m["external_id"] for m in context["group"]],
            "expires_at": lease.expires_at.isoformat(),
            "html": _fragment(request, {**context, "filters": filters}, csrf),
        }
        for lease, context in claimed
    ]
    return JSONResponse({"items": items})


def _fragment(request: Request, context: dict[str, Any], csrf: str) -> str:
    template = templates.get_template("_item.html")
    return template.render({**context, "request": request, "csrf": csrf, "csrf_field": CSRF_FIELD})


async def _attempt(runtime: Runtime, work: Callable[[Session], None]) -> decisions.ReviewError | None:
    """Run a moderator's action in one transaction off the event loop; the refusal, if any."""

    def run() -> decisions.ReviewError | None:
        try:
            with runtime.db.transaction() as session:
                work(session)
        except decisions.ReviewError as error:
            return error
        return None

    return await run_in_threadpool(run)


async def _answer(
    request: Request,
    runtime: Runtime,
    moderator: str,
    filters: Filters,
    refused: decisions.ReviewError | None,
) -> Response:
    if _wants_json(request):
        body: dict[str, Any] = {"progress": await run_in_threadpool(_progress_now, runtime, moderator)}
        if refused is not None:
            return JSONResponse({**body, "detail": refused.message}, status_code=refused.status)
        return JSONResponse(body)
    query = _filter_query(filters)
    response = RedirectResponse("/review" + ("?" + urlencode(query) if query else ""), status_code=303)
    if refused is not None:
        sessions = sessions_of(request)
        sessions.write(request, response, {**sessions.read(request), "notice": refused.message})
    return response


@router.post("/review/decide")
async def decide(
    request: Request,
    external_id: str = Form(max_length=200),
    source: str | None = Form(None, max_length=100),
    action: str = Form(max_length=16),
    category: str | None = Form(None, max_length=200),
    note: str | None = Form(None, max_length=decisions.MAX_NOTE),
    member: Annotated[list[str], Form()] = [],  # noqa: B006 (FastAPI copies it)
    filter_category: str | None = Form(None, max_length=200),
    filter_reason: Annotated[Reason | None, Form()] = None,
    filter_min_confidence: float | None = Form(None, ge=0, le=1),
    filter_max_confidence: float | None = Form(None, ge=0, le=1),
    csrf_token: str = Form(""),
    identity: Identity = Moderator,
) -> Response:
    """A decision on one claimed item and the members of its group that were left ticked.

    The external id is a form field, so any id works. Each member is decided in a transaction of
    its own (its own audit row): one refused member does not undo the others.
    """
    check_form_csrf(request, csrf_token)
    runtime = runtime_of(request)
    if action == "override" and not category:
        raise HTTPException(422, "category: required to override")

    def work_on(target: str, source: str | None = None) -> Callable[[Session], None]:
        def work(session: Session) -> None:
            source_id = decisions.named_source(session, source)
            decisions.decide(
                session, identity.name, target, action, category or None, note or None, source_id
            )

        return work

    # The item's source is sent with it: a moderator may hold two sources' items of one id.
    refused = await _attempt(runtime, work_on(external_id, source or None))
    if refused is None:
        for other in member[: groups.MAX_MEMBERS]:
            if other != external_id:
                await _attempt(runtime, work_on(other))
    filters = _filters(filter_category, filter_reason, filter_min_confidence, filter_max_confidence)
    return await _answer(request, runtime, identity.name, filters, refused)


@router.post("/review/undo")
async def undo(
    request: Request,
    external_id: str = Form(max_length=200),
    source: str | None = Form(None, max_length=100),
    filter_category: str | None = Form(None, max_length=200),
    filter_reason: Annotated[Reason | None, Form()] = None,
    filter_min_confidence: float | None = Form(None, ge=0, le=1),
    filter_max_confidence: float | None = Form(None, ge=0, le=1),
    csrf_token: str = Form(""),
    identity: Identity = Moderator,
) -> Response:
    """Revert the moderator's last decision on the item; with JSON, the item comes back rendered."""
    check_form_csrf(request, csrf_token)
    runtime = runtime_of(request)
    lease_seconds = runtime.settings.review.review_lease_seconds

    def work(session: Session) -> None:
        decisions.undo(
            session,
            identity.name,
            external_id,
            lease_seconds,
            decisions.named_source(session, source or None),
        )

    filters = _filters(filter_category, filter_reason, filter_min_confidence, filter_max_confidence)
    refused = await _attempt(runtime, work)
    response = await _answer(request, runtime, identity.name, filters, refused)
    if refused is None and isinstance(response, JSONResponse):
        # The undone item is the moderator's again (undo leased it): the desk shows it first.
        context = await run_in_threadpool(_held_item, runtime, identity.name, external_id, source or None)
        if context is not None:
            context["filters"] = filters
        csrf = sessions_of(request).read(request).get("csrf", "")
        items = (
            []
            if context is None
            else [{"external_id": external_id, "html": _fragment(request, context, csrf)}]
        )
        progress = await run_in_threadpool(_progress_now, runtime, identity.name)
        return JSONResponse({"progress": progress, "items": items})
    return response


def _progress_now(runtime: Runtime, moderator: str) -> dict[str, Any]:
    with runtime.db.transaction() as session:
        return _progress(session, moderator)


def _held_item(
    runtime: Runtime, moderator: str, external_id: str, source: str | None
) -> dict[str, Any] | None:
    with runtime.db.transaction() as session:
        lease = queue.held(session, moderator, external_id, decisions.named_source(session, source))
        return None if lease is None else _item(runtime, session, lease)


@router.post("/review/renew")
async def renew(
    request: Request,
    external_id: Annotated[list[str], Form()] = [],  # noqa: B006 (FastAPI copies it)
    csrf_token: str = Form(""),
    identity: Identity = Moderator,
) -> JSONResponse:
    """The desk is still open: extend the leases of what it shows and keeps ready."""
    check_form_csrf(request, csrf_token)
    runtime = runtime_of(request)
    lease_seconds = runtime.settings.review.review_lease_seconds

    def work() -> int:
        with runtime.db.transaction() as session:
            return queue.renew(session, identity.name, external_id[:50], lease_seconds)

    return JSONResponse({"renewed": await run_in_threadpool(work)})


@router.post("/review/release")
async def release(
    request: Request,
    external_id: Annotated[list[str], Form()] = [],  # noqa: B006 (FastAPI copies it)
    csrf_token: str = Form(""),
    identity: Identity = Moderator,
) -> JSONResponse:
    """The desk closed or changed its filters: its items go back to the queue for others."""
    check_form_csrf(request, csrf_token)
    runtime = runtime_of(request)

    def work() -> int:
        with runtime.db.transaction() as session:
            return queue.release(session, identity.name, external_id[:50])

    return JSONResponse({"released": await run_in_threadpool(work)})
