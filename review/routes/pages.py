"""The moderators' pages: sign-in, the review page kept open all day, history, dashboard."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from common.listings.views import labelled_neighbours, listing_view
from common.moderation import decisions, history, queue
from common.moderation.accounts import Identity, authenticate
from common.object_store import STORAGE_ERRORS, overlay_url
from common.photos.urls import parse_s3_url
from common.runtime import Runtime
from review.auth import CSRF_FIELD, Moderator, check_form_csrf, new_csrf, runtime_of, sessions_of
from review.charts import hourly_bars, line_chart
from review.routes.review_api import dashboard_figures

HERE = Path(__file__).resolve().parents[1]
# Jinja2Templates autoescapes .html templates: titles, categories and notes are shown as text.
templates = Jinja2Templates(directory=HERE / "templates")
STATIC = {"review.js": "text/javascript"}
router = APIRouter(include_in_schema=False)


def _render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    sessions = sessions_of(request)
    data = sessions.read(request)
    fresh = "csrf" not in data
    if fresh:
        data["csrf"] = new_csrf()
    response = templates.TemplateResponse(
        request, name, {**context, "csrf": data["csrf"], "csrf_field": CSRF_FIELD}, status_code=status_code
    )
    if fresh:
        sessions.write(request, response, data)
    return response


def _safe_next(target: str | None) -> str:
    # Only paths of this site: never an open redirect to another host.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/review"


@router.get("/sign-in")
def sign_in_page(request: Request, next: str = Query("/review", max_length=500)) -> HTMLResponse:
    return _render(request, "sign_in.html", {"next": _safe_next(next), "error": None})


@router.post("/sign-in")
async def sign_in(
    request: Request,
    name: str = Form(max_length=100),
    password: str = Form(max_length=1024),
    csrf_token: str = Form(""),
    next: str = Form("/review", max_length=500),
) -> Response:
    check_form_csrf(request, csrf_token)
    runtime = runtime_of(request)
    sessions = sessions_of(request)

    def check() -> int | None:
        with runtime.db.transaction() as session:
            account = authenticate(session, name, password)
            return None if account is None else account.id

    account_id = await run_in_threadpool(check)
    if account_id is None:
        await asyncio.sleep(sessions.failure_delay(name))
        return _render(
            request, "sign_in.html", {"next": _safe_next(next), "error": "Wrong name or password."}, 401
        )
    sessions.forget_failures(name)
    response = RedirectResponse(_safe_next(next), status_code=303)
    # A new CSRF token with the new session: one seen before sign-in is worthless after it.
    sessions.write(request, response, {"account": account_id, "csrf": new_csrf()})
    return response


@router.post("/sign-out")
def sign_out(request: Request, csrf_token: str = Form("")) -> Response:
    check_form_csrf(request, csrf_token)
    response = RedirectResponse("/sign-in", status_code=303)
    sessions_of(request).clear(response)
    return response


@router.get("/")
def home(identity: Identity = Moderator) -> Response:
    return RedirectResponse("/review", status_code=303)


@router.get("/static/{name}")
def static(name: str, identity: Identity = Moderator) -> Response:
    if name not in STATIC:
        raise HTTPException(404, f"name: no static file {name!r}")
    return FileResponse(HERE / "static" / name, media_type=STATIC[name])


def photo_url(runtime: Runtime, image_url: str | None) -> str | None:
    """What the browser can load: a presigned URL for our own objects, the marketplace's URL else."""
    if not image_url:
        return None
    if image_url.startswith("s3://"):
        bucket, key = parse_s3_url(image_url)
        try:
            return runtime.store.presigned_get(bucket, key, runtime.settings.store.presign_expiry)
        except STORAGE_ERRORS:
            return None
    return image_url


def _review_context(runtime: Runtime, moderator: str, category: str | None) -> dict[str, Any]:
    lease = runtime.settings.review.review_lease_seconds
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with runtime.db.transaction() as session:
        claimed = queue.claim(session, moderator, lease, category)
    with runtime.db.transaction() as session:
        item = listing_view(session, claimed.external_id) if claimed is not None else None
        neighbours = labelled_neighbours(session, item["id"]) if item is not None else []
        context = {
            "item": item,
            "lease_expires_at": claimed.expires_at if claimed is not None else None,
            "neighbours": [{**n, "photo": photo_url(runtime, n["image_url"])} for n in neighbours],
            "waiting": queue.waiting_counts(session),
            "decided_today": decisions.decided_since(session, moderator, midnight),
            "last": decisions.last_decision(session, moderator),
            "categories": sorted(queue.known_categories(session)),
            "category": category,
        }
    if item is not None:
        suggestion = item["suggestion"] or {}
        context["photo"] = photo_url(runtime, item["image_url"])
        context["heatmap"] = overlay_url(runtime.store, runtime.settings, suggestion.get("heatmap_key"))
        context["overlay"] = overlay_url(runtime.store, runtime.settings, suggestion.get("overlay_key"))
    return context


@router.get("/review")
async def review_page(
    request: Request,
    category: str | None = Query(None, max_length=200),
    notice: str | None = Query(None, max_length=500),
    identity: Identity = Moderator,
) -> HTMLResponse:
    runtime = runtime_of(request)
    context = await run_in_threadpool(_review_context, runtime, identity.name, category or None)
    return _render(request, "review.html", {**context, "identity": identity, "notice": notice})


async def _attempt(runtime: Runtime, work: Callable[[Session], None]) -> str | None:
    """Run a moderator's action in one transaction off the event loop; the refusal's message, if any."""

    def run() -> str | None:
        try:
            with runtime.db.transaction() as session:
                work(session)
        except decisions.ReviewError as error:
            return error.message
        return None

    return await run_in_threadpool(run)


def _back_to_review(category: str | None, notice: str | None = None) -> RedirectResponse:
    query = {k: v for k, v in (("category", category), ("notice", notice)) if v}
    return RedirectResponse("/review" + ("?" + urlencode(query) if query else ""), status_code=303)


@router.post("/review/{external_id}/decide")
async def decide_form(
    request: Request,
    external_id: str,
    action: str = Form(max_length=16),
    category: str | None = Form(None, max_length=200),
    note: str | None = Form(None, max_length=decisions.MAX_NOTE),
    filter_category: str | None = Form(None, max_length=200),
    csrf_token: str = Form(""),
    identity: Identity = Moderator,
) -> Response:
    check_form_csrf(request, csrf_token)
    runtime = runtime_of(request)
    if action == "override" and category is None:
        raise HTTPException(422, "category: required to override")

    def work(session: Session) -> None:
        decisions.decide(session, identity.name, external_id, action, category or None, note or None)

    return _back_to_review(filter_category, await _attempt(runtime, work))


@router.post("/review/undo")
async def undo_form(
    request: Request,
    external_id: str = Form(max_length=200),
    filter_category: str | None = Form(None, max_length=200),
    csrf_token: str = Form(""),
    identity: Identity = Moderator,
) -> Response:
    check_form_csrf(request, csrf_token)
    runtime = runtime_of(request)
    lease = runtime.settings.review.review_lease_seconds

    def work(session: Session) -> None:
        decisions.undo(session, identity.name, external_id, lease)

    return _back_to_review(filter_category, await _attempt(runtime, work))


@router.get("/history")
async def history_page(
    request: Request,
    moderator: str | None = Query(None, max_length=100),
    category: str | None = Query(None, max_length=200),
    identity: Identity = Moderator,
) -> HTMLResponse:
    runtime = runtime_of(request)

    def rows() -> list[dict[str, Any]]:
        with runtime.db.transaction() as session:
            return history.history(session, moderator or None, category or None)

    decisions = await run_in_threadpool(rows)
    return _render(
        request,
        "history.html",
        {"identity": identity, "decisions": decisions, "moderator": moderator, "category": category},
    )


@router.get("/dashboard")
async def dashboard_page(request: Request, identity: Identity = Moderator) -> HTMLResponse:
    figures = await run_in_threadpool(dashboard_figures, runtime_of(request))
    versions = figures["clustering_versions"]
    chart = line_chart(
        [v["id"] for v in versions],
        {name: [v[name] for v in versions] for name in ("ari", "nmi", "stability_ari")},
    )
    largest = max((c["size"] for c in figures["current_clusters"]), default=0)
    hourly = hourly_bars(figures["decisions_per_hour"], datetime.now(UTC))
    return _render(
        request,
        "dashboard.html",
        {
            "identity": identity,
            "figures": figures,
            "chart": chart,
            "hourly": hourly,
            "largest_cluster": largest,
        },
    )
