"""The moderators' pages: sign-in, history, dashboard (the review desk is `review.routes.desk`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from common.moderation import history
from common.moderation.accounts import Identity, authenticate, end_session, start_session
from common.object_store import STORAGE_ERRORS
from common.photos.urls import parse_s3_url
from common.runtime import Runtime
from review.auth import (
    CSRF_FIELD,
    HashingBusy,
    Moderator,
    PasswordHashing,
    SignInThrottle,
    check_form_csrf,
    new_csrf,
    runtime_of,
    sessions_of,
)
from review.charts import hourly_bars, line_chart
from review.routes.review_api import dashboard_figures

HERE = Path(__file__).resolve().parents[1]
# Jinja2Templates autoescapes .html templates: titles, categories and notes are shown as text.
templates = Jinja2Templates(directory=HERE / "templates")
STATIC = {"review.js": "text/javascript"}
router = APIRouter(include_in_schema=False)


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    sessions = sessions_of(request)
    data = sessions.read(request)
    fresh = "csrf" not in data
    if fresh:
        data["csrf"] = new_csrf()
    response = templates.TemplateResponse(
        request,
        name,
        {**context, "csrf": data["csrf"], "csrf_field": CSRF_FIELD},
        status_code=status_code,
        headers=headers,
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
    return render(request, "sign_in.html", {"next": _safe_next(next), "error": None})


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
    throttle: SignInThrottle = request.app.state.sign_in_throttle
    address = request.client.host if request.client is not None else "unknown"
    wait = await run_in_threadpool(throttle.locked_for, name, address)
    if wait:
        context = {"next": _safe_next(next), "error": f"Too many failed sign-ins: try again in {wait} s."}
        return render(request, "sign_in.html", context, 429, {"Retry-After": str(wait)})

    def check() -> int | None:
        with runtime.db.transaction() as session:
            account = authenticate(session, name, password)
            return None if account is None else account.id

    hashing: PasswordHashing = request.app.state.password_hashing
    try:
        account_id = await hashing.run(check)
    except HashingBusy:
        context = {"next": _safe_next(next), "error": "Too many sign-ins at once: try again in a moment."}
        return render(request, "sign_in.html", context, 429, {"Retry-After": "1"})
    if account_id is None:
        await asyncio.sleep(await run_in_threadpool(throttle.failed, name, address))
        return render(
            request, "sign_in.html", {"next": _safe_next(next), "error": "Wrong name or password."}, 401
        )
    await run_in_threadpool(throttle.succeeded, name)

    def start() -> str:
        with runtime.db.transaction() as session:
            return start_session(session, account_id)

    sid = await run_in_threadpool(start)
    response = RedirectResponse(_safe_next(next), status_code=303)
    # A new CSRF token with the new session: one seen before sign-in is worthless after it.
    sessions_of(request).write(request, response, {"sid": sid, "csrf": new_csrf()})
    return response


@router.post("/sign-out")
def sign_out(request: Request, csrf_token: str = Form("")) -> Response:
    check_form_csrf(request, csrf_token)
    sid = sessions_of(request).read(request).get("sid")
    if isinstance(sid, str):
        # Ended on the server: a copy of the cookie is worth nothing from now on.
        with runtime_of(request).db.transaction() as session:
            end_session(session, sid)
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
    return render(
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
    return render(
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
