"""`Idempotency-Key`: a POST retried with the same key gets the first answer, not a second effect.

A client that lost an answer (a timeout, a dropped connection) sends the request again with the
same key; the first answer is replayed (with `Idempotent-Replayed: true`) for 24 hours. The key is
scoped to the caller (its token, or its address), the method and the path; the same key with
another body is refused (422 `idempotency_key_reused`), and one whose first request is still
running answers 409 `idempotency_in_flight`. Answers are kept in Redis; with Redis away the
request runs as if it had no key (the writes themselves are keyed on the listing's state).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from contextlib import suppress

from fastapi import Request
from fastapi.responses import Response
from redis import asyncio as aioredis
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from review.limits import Limits, caller_key
from review.problems import Problem, from_http

HEADER = "idempotency-key"
KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, as the draft standard's examples
KEPT = 24 * 3600
PENDING = 60  # seconds a first request may run before a retry is let through again
PREFIX = "vitrine:idempotency:"
log = logging.getLogger(__name__)


async def once(request: Request, body: bytes, run: Callable[[], Awaitable[Response]]) -> Response:
    """`run()`'s answer, or the answer of the first request with this Idempotency-Key."""
    key = request.headers.get(HEADER)
    if key is None:
        return await run()
    if not KEY.fullmatch(key):
        raise Problem(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key: 1 to 255 printable ASCII characters",
            [{"pointer": "/header/Idempotency-Key", "code": "invalid", "detail": "1 to 255 printable ASCII"}],
        )
    limits: Limits = request.app.state.limits
    client = limits.client()
    _, caller = caller_key(request)
    name = PREFIX + hashlib.sha256(f"{caller}|{request.method}|{request.url.path}|{key}".encode()).hexdigest()
    fingerprint = hashlib.sha256(body).hexdigest()
    try:
        first = bool(await client.set(name, json.dumps({"fingerprint": fingerprint}), nx=True, ex=PENDING))
        stored = None if first else await client.get(name)
    except RedisError as error:
        log.warning("idempotency keys unavailable (%s): the request runs without its key", error)
        return await run()
    if not first:
        return _replay(stored, fingerprint)
    try:
        answer = await _answer(run)
    except BaseException:
        await _forget(client, name)
        raise
    if answer.status_code >= 500 or answer.status_code == 429:
        await _forget(client, name)  # not an answer to keep: the retry should really run
        return answer
    record = {
        "fingerprint": fingerprint,
        "status": answer.status_code,
        "body": bytes(answer.body).decode(),
        "media_type": answer.media_type,
    }
    try:
        await client.set(name, json.dumps(record), ex=KEPT)
    except RedisError as error:
        log.warning("idempotency key not kept (%s)", error)
    return answer


async def _answer(run: Callable[[], Awaitable[Response]]) -> Response:
    try:
        return await run()
    except StarletteHTTPException as refused:  # a refusal is an answer too, kept like any other
        return from_http(refused)


def _replay(stored: bytes | str | None, fingerprint: str) -> Response:
    record = json.loads(stored) if stored else {}
    if record.get("fingerprint") != fingerprint:
        raise Problem(
            422,
            "idempotency_key_reused",
            "Idempotency-Key: used before with another body; use a new key for a new request",
        )
    if "status" not in record:
        raise Problem(
            409,
            "idempotency_in_flight",
            "Idempotency-Key: the first request with this key is still running; retry in a moment",
            headers={"Retry-After": "1"},
        )
    return Response(
        record["body"],
        status_code=record["status"],
        media_type=record["media_type"],
        headers={"Idempotent-Replayed": "true"},
    )


async def _forget(client: aioredis.Redis, name: str) -> None:
    with suppress(RedisError):
        await client.delete(name)
