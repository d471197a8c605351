"""One error format for the whole app: RFC 9457 problem details (`application/problem+json`).

Every error answers the same shape, whatever raised it (a route, FastAPI's validation, Starlette's
router, a bug of ours):

    {"type": "/problems/invalid_listing", "title": "Unprocessable Content", "status": 422,
     "code": "invalid_listing", "detail": "image_url: ...", "request_id": "3f2c...",
     "errors": [{"pointer": "/0/image_url", "code": "invalid", "detail": "..."}]}

`code` is stable and meant for programs; `detail` is for people and may change. `errors` names each
field at fault as a JSON pointer (RFC 6901) into the request body (or `/query/...`, `/path/...`).
The request id is the one on the request's log lines and in its `X-Request-ID` header.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.ops import logs

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger(__name__)

# The code of an error raised with a status only; routes raise `Problem` to say more.
CODE_OF_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}
# Details written as "field: message" name their field.
FIELD_DETAIL = re.compile(r"(?P<field>[A-Za-z_][\w.-]*): (?P<message>.+)", re.DOTALL)


class Problem(StarletteHTTPException):
    """An error with its stable code and, where known, the fields at fault."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        errors: Sequence[dict[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, detail, headers)
        self.code = code
        self.errors = list(errors)


def pointer(location: Iterable[object]) -> str:
    """A JSON pointer (RFC 6901) to a field: `("body", 0, "image_url")` → `/0/image_url`."""
    parts = [str(part) for part in location]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def message(text: str) -> str:
    """pydantic's message without its "Value error, " prefix (it says nothing to a client)."""
    for prefix in ("Value error, ", "Assertion failed, "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def field_errors(errors: Iterable[Mapping[str, Any]], prefix: Sequence[object] = ()) -> list[dict[str, str]]:
    """pydantic's errors as problem `errors`: every one, each with its pointer."""
    return [
        {
            "pointer": pointer([*prefix, *error.get("loc", ())]),
            "code": str(error.get("type", "invalid")),
            "detail": message(str(error.get("msg", ""))),
        }
        for error in errors
    ]


def problem_response(
    status: int,
    code: str,
    detail: str,
    errors: Sequence[dict[str, str]] = (),
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": f"/problems/{code}",
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
        "request_id": logs.request_id.get() or None,
        **extra,
    }
    if errors:
        body["errors"] = list(errors)
    return JSONResponse(
        body, status_code=status, headers=dict(headers) if headers else None, media_type=PROBLEM_JSON
    )


def from_http(error: StarletteHTTPException) -> JSONResponse:
    detail = str(error.detail)
    if isinstance(error, Problem):
        return problem_response(error.status_code, error.code, detail, error.errors, error.headers)
    errors: list[dict[str, str]] = []
    named = FIELD_DETAIL.fullmatch(detail)
    if named is not None and error.status_code in (400, 404, 409, 413, 422):
        field = named["field"]
        where = "" if field in ("body", "item") else "/" + field.replace(".", "/")
        errors = [
            {
                "pointer": where,
                "code": CODE_OF_STATUS.get(error.status_code, "error"),
                "detail": named["message"],
            }
        ]
    code = CODE_OF_STATUS.get(error.status_code, f"http_{error.status_code}")
    return problem_response(error.status_code, code, detail, errors, getattr(error, "headers", None))


def install(app: FastAPI) -> None:
    """Answer every error of `app` as problem details."""

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> Response:
        return from_http(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> Response:
        errors = field_errors(error.errors())
        if any(e["code"] == "json_invalid" for e in errors):
            return problem_response(400, "malformed_json", "body: not valid JSON", errors)
        detail = "; ".join(f"{e['pointer'] or 'body'}: {e['detail']}" for e in errors)
        return problem_response(422, "invalid", detail, errors)

    @app.exception_handler(RecursionError)
    async def _deep(_: Request, error: RecursionError) -> Response:
        return problem_response(400, "too_deep", "body: nested too deeply")

    @app.exception_handler(UnicodeEncodeError)
    async def _surrogates(_: Request, error: UnicodeEncodeError) -> Response:
        # A lone surrogate (`"\\ud800"`) is valid JSON but no text: it cannot be stored.
        return problem_response(400, "invalid_text", "body: a string holds a lone surrogate, not text")


def internal_error() -> JSONResponse:
    """The answer to a bug of ours: no trace, only the request id that finds it in the logs."""
    return problem_response(500, "internal_error", "an error of ours; the request id names it in our logs")


def not_text_at(value: Any, location: tuple[object, ...] = ()) -> tuple[object, ...] | None:
    """The location of the first string that is not text (a lone surrogate), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return location
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = not_text_at(key, location) or not_text_at(item, (*location, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = not_text_at(item, (*location, index))
            if found is not None:
                return found
    return None


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body: refused with a problem when it is not JSON, too large (checked
    before it is read in full, never parsed), too deep, or holds a string that is not text."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
        raise Problem(
            415,
            "unsupported_media_type",
            f"content-type: send application/json, not {kind or 'nothing'}",
            [
                {
                    "pointer": "",
                    "code": "unsupported_media_type",
                    "detail": "Content-Type must be application/json",
                }
            ],
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Problem(413, "too_large", f"body: at most {limit} bytes, Content-Length says {declared}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, "too_large", f"body: at most {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    request.state.raw_body = raw  # for whoever needs the bytes as sent (an idempotency fingerprint)
    try:
        body = json.loads(raw)
    except RecursionError:
        raise Problem(400, "too_deep", "body: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise Problem(
            400,
            "malformed_json",
            f"body: malformed JSON ({error})",
            [{"pointer": "", "code": "malformed_json", "detail": str(error)}],
        ) from None
    try:
        where = not_text_at(body)
    except RecursionError:
        raise Problem(400, "too_deep", "body: nested too deeply") from None
    if where is not None:
        raise Problem(
            400,
            "invalid_text",
            "body: a string holds a lone surrogate, not text",
            [{"pointer": pointer(where), "code": "invalid_text", "detail": "a lone surrogate is not text"}],
        )
    return body
