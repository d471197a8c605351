"""The review app's factory: one FastAPI application for the pages and the `/api/v1` API.

`vitrine serve` builds it from the settings it read; uvicorn started on its own does the same with
`uvicorn --factory review.app:create_app_from_environment`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from common.moderation.accounts import Identity
from common.ops import logs
from common.runtime import Runtime
from common.settings import Settings, load_settings
from review import problems
from review.auth import PasswordHashing, Reader, Sessions, SignInRequired, SignInThrottle
from review.limits import Limits
from review.metrics import AppMetrics
from review.routes import api_docs, desk, listings, pages, review_api, webhooks

# A request id from outside is kept if it looks like one (a proxy's UUID or trace id).
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
access = logging.getLogger("review.access")

# Pages load scripts only from this app; photos and overlays come from the object store or the
# marketplace's own hosts, hence any https image source.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: http: https:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)

# One year, the value browsers' preload lists ask for; subdomains are left to the operator.
HSTS = "max-age=31536000"


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    owned = runtime is None
    runtime = runtime or Runtime(settings)

    hashing = PasswordHashing()
    limits = Limits(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        hashing.close()
        await limits.close()
        if owned:
            runtime.close()

    app = FastAPI(
        lifespan=lifespan,
        title="Vitrine",
        version="1",
        summary="Send listings, read their suggested category, and review what the model is unsure of.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.state.sessions = Sessions(settings)
    app.state.password_hashing = hashing
    app.state.limits = limits
    app.state.sign_in_throttle = SignInThrottle(settings, lambda: runtime.publisher.redis, app.state.sessions)
    app.state.metrics = metrics = AppMetrics()
    app.include_router(listings.router)
    app.include_router(review_api.router)
    app.include_router(webhooks.router)
    app.include_router(pages.router)
    app.include_router(desk.router)

    app.openapi = lambda: api_docs.describe(app)  # type: ignore[method-assign]
    app.include_router(api_docs.router)

    @app.get("/api/v1/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    # For Prometheus with an API token (`authorization: {credentials_file: ...}` in its scrape
    # configuration): route names and latencies are not for anyone who can reach the app.
    @app.get("/metrics", include_in_schema=False)
    def metrics_page(_: Identity = Reader) -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def healthz(request: Request) -> JSONResponse:
        try:
            with request.app.state.runtime.db.transaction() as session:
                session.execute(text("SELECT 1"))
        except SQLAlchemyError as error:
            return JSONResponse({"ok": False, "postgres": type(error).__name__}, status_code=503)
        return JSONResponse({"ok": True})

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, error: SignInRequired) -> Response:
        return RedirectResponse("/sign-in?" + urlencode({"next": error.next_path}), status_code=303)

    problems.install(app)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        # The caller's request id (a proxy's), or a new one: on every log line of this request.
        rid = request.headers.get("x-request-id", "")
        token = logs.request_id.set(rid if REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex[:16])
        try:
            try:
                await limits.check(request)
                response: Response = await call_next(request)
            except problems.Problem as refused:
                response = problems.from_http(refused)
            except Exception:
                # A bug of ours: logged with this request's id, answered as a problem like any error.
                logging.getLogger("review.app").exception("%s %s failed", request.method, request.url.path)
                response = problems.internal_error()
            seconds = time.perf_counter() - started
            route = request.scope.get("route")
            metrics.observe(getattr(route, "path", None), request.method, response.status_code, seconds)
            # The access line (uvicorn's own has neither time nor duration): path, not query.
            access.info(
                "%s %s %d %.1f ms", request.method, request.url.path, response.status_code, 1000 * seconds
            )
            response.headers["X-Request-ID"] = logs.request_id.get() or ""
        finally:
            logs.request_id.reset(token)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        # Over https (directly, or behind a trusted proxy) browsers are told to stay on https.
        if request.url.scheme == "https":
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        if request.url.path.startswith(("/api/", "/review", "/history", "/dashboard")):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app


def create_app_from_environment() -> FastAPI:
    return create_app(load_settings())
