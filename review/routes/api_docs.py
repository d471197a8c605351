"""The API's description and its interactive docs, public and served by the app itself.

`/api/v1/openapi.json` answers without a token (it says what exists, nothing of any data);
`/docs` (Swagger UI) and `/redoc` load only this app's files (fastapi-offline's copies of the
two UIs), so they work offline and under the app's Content-Security-Policy (no inline script).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from common.listings.changes import ListingChanges
from common.listings.events import ListingEvent
from review.auth import SESSION_COOKIE
from review.problems import Problem

router = APIRouter(include_in_schema=False)

UI_FILES = files("fastapi_offline") / "static"
OWN_FILES = Path(__file__).resolve().parent.parent / "static"
ASSETS = {
    "swagger-ui-bundle.js": (UI_FILES, "text/javascript"),
    "swagger-ui.css": (UI_FILES, "text/css"),
    "redoc.standalone.js": (UI_FILES, "text/javascript"),
    "favicon.png": (UI_FILES, "image/png"),
    "api-docs.js": (OWN_FILES, "text/javascript"),
}

SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Vitrine API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="/docs/assets/favicon.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/api-docs.js"></script></body></html>
"""

REDOC_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Vitrine API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="/docs/assets/favicon.png"></head>
<body><redoc spec-url="/api/v1/openapi.json"></redoc>
<script src="/docs/assets/redoc.standalone.js"></script></body></html>
"""


@router.get("/openapi.json")
def openapi_elsewhere() -> Response:
    return RedirectResponse("/api/v1/openapi.json", status_code=308)


@router.get("/docs")
def swagger() -> HTMLResponse:
    return HTMLResponse(SWAGGER_PAGE)


@router.get("/redoc")
def redoc() -> HTMLResponse:
    # Redoc builds its search index in a worker made from a blob: URL.
    return HTMLResponse(REDOC_PAGE, headers={"Content-Security-Policy": REDOC_CSP})


@router.get("/docs/assets/{name}")
def asset(name: str) -> Response:
    if name not in ASSETS:
        raise Problem(404, "not_found", f"name: no file {name!r}")
    folder, media_type = ASSETS[name]
    return Response(
        (folder / name).read_bytes(),
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=86400"},
    )


REDOC_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: https:; worker-src 'self' blob:; font-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def describe(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI description: FastAPI's, with the ingest body's item schema and how to sign in."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes, description=DESCRIPTION
    )
    components = schema.setdefault("components", {})
    event = ListingEvent.model_json_schema(ref_template="#/components/schemas/{model}")
    components.setdefault("schemas", {}).update(event.pop("$defs", {}))
    components["schemas"]["ListingEvent"] = event
    components["schemas"]["ListingChanges"] = ListingChanges.model_json_schema()
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from `vitrine tokens add NAME --scope ingest|review`",
        },
        "session": {
            "type": "apiKey",
            "in": "cookie",
            "name": SESSION_COOKIE,
            "description": "The review app's signed session (a browser), with its X-CSRF-Token header",
        },
    }
    schema["security"] = [{"bearer": []}, {"session": []}]
    # FastAPI documents its own 422 body; the app answers problem details instead (review.problems).
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
    for operation in (op for ops in schema["paths"].values() for op in ops.values()):
        invalid = operation["responses"].get("422")
        if invalid is not None:
            invalid["content"] = problem
            if invalid.get("description") == "Validation Error":
                invalid["description"] = "Invalid: every field at fault in `errors`"
    for unused in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(unused, None)
    app.openapi_schema = schema
    return schema


DESCRIPTION = """Send listings and read what became of them (ingest tokens); claim, decide and audit
what the model is unsure of (review tokens). Every error is RFC 9457 problem details
(`application/problem+json`) with a stable `code`, the fields at fault as JSON pointers and the
request id."""
