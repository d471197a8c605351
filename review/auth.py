"""Who is calling: a bearer token (API) or a signed session cookie (browser), and CSRF for the latter.

A session cookie carries only a session id and the session's CSRF token, signed. The session is
a row in Postgres, read on every request: signing out, an idle time-out or a disabled account
ends it at once, whatever copies of the cookie exist. Failed sign-ins are counted in Redis, so
the slow-down and the lock-out hold across every process of the app.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import timedelta
from typing import Any, TypeVar

import redis
from fastapi import Depends, HTTPException, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.orm import Session

from common.moderation.accounts import Identity, session_account, token_identity
from common.runtime import Runtime
from common.schema import DEFAULT_SOURCE_ID, TokenScope
from common.settings import ConfigError, Settings
from common.sources.registry import SourceError, source_id_named

SESSION_COOKIE = "vitrine_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Sign-in failures are remembered this long, per name and per address, to slow down guessing.
FAILURE_MEMORY = 15 * 60
MAX_DELAY_DOUBLINGS = 4
# One address may fail this many times more than one name before it is locked out.
ADDRESS_ALLOWANCE = 5
FAILURES_KEY = "vitrine:sign-in-failures:"
T = TypeVar("T")
log = logging.getLogger(__name__)


class SignInRequired(Exception):
    """A page was asked for without a session: answered with a redirect to the sign-in page."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class Sessions:
    """Signs and reads the session cookie; remembers recent sign-in failures of this process."""

    def __init__(self, settings: Settings) -> None:
        if (
            settings.review.session_secret is None
            or len(settings.review.session_secret.get_secret_value()) < 16
        ):
            raise ConfigError(
                "VITRINE_SESSION_SECRET: the review app needs a secret of at least 16 characters"
            )
        self.serializer = URLSafeTimedSerializer(
            settings.review.session_secret.get_secret_value(), salt="session"
        )
        self.max_age = settings.review.session_max_age
        self.sign_in_delay = settings.review.sign_in_delay
        self.failures: dict[str, tuple[int, float]] = {}

    def read(self, request: Request) -> dict[str, Any]:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return {}
        try:
            data = self.serializer.loads(raw, max_age=self.max_age)
        except BadSignature:
            return {}
        return data if isinstance(data, dict) else {}

    def write(self, request: Request, response: Response, data: dict[str, Any]) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            self.serializer.dumps(data),
            max_age=self.max_age,
            httponly=True,
            samesite="lax",
            # Behind a TLS proxy uvicorn's --proxy-headers makes the scheme https.
            secure=request.url.scheme == "https",
            path="/",
        )

    def clear(self, response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/")

    def failure_delay(self, name: str) -> float:
        """Seconds to wait before answering a failed sign-in of `name`, and remember the failure."""
        now = time.monotonic()
        count, last = self.failures.get(name, (0, now))
        if now - last > FAILURE_MEMORY:
            count = 0
        self.failures[name] = (count + 1, now)
        if len(self.failures) > 10_000:
            self.failures = {k: v for k, v in self.failures.items() if now - v[1] <= FAILURE_MEMORY}
        return float(self.sign_in_delay * 2 ** min(count, MAX_DELAY_DOUBLINGS))

    def forget_failures(self, name: str) -> None:
        self.failures.pop(name, None)


class SignInThrottle:
    """Failed sign-ins counted in Redis, per name and per address, shared by every process of the
    app: each failure answers more slowly, and past the limit sign-ins are refused for a while.
    With Redis away, each process falls back to its own memory (`Sessions.failure_delay`)."""

    def __init__(self, settings: Settings, client: Callable[[], redis.Redis], local: Sessions) -> None:
        self._client, self.local = client, local
        self.delay = settings.review.sign_in_delay
        self.limit = settings.review.sign_in_lockout_after
        self.lockout = settings.review.sign_in_lockout_seconds

    @property
    def client(self) -> redis.Redis:
        return self._client()  # the broker's Redis, connected when first needed

    def _keys(self, name: str, address: str) -> tuple[str, str]:
        return FAILURES_KEY + "name:" + name.lower(), FAILURES_KEY + "address:" + address

    def locked_for(self, name: str, address: str) -> int:
        """Seconds this sign-in must wait before it may be tried at all (0: it may)."""
        by_name, by_address = self._keys(name, address)
        try:
            counts = self.client.mget(by_name, by_address)
            if int(counts[0] or 0) >= self.limit:
                return max(1, int(self.client.ttl(by_name)))
            if int(counts[1] or 0) >= self.limit * ADDRESS_ALLOWANCE:
                return max(1, int(self.client.ttl(by_address)))
        except redis.RedisError as error:
            log.warning("sign-in throttle unavailable (%s): this process's memory only", error)
        return 0

    def failed(self, name: str, address: str) -> float:
        """Remember a failure; the seconds to wait before answering it."""
        by_name, by_address = self._keys(name, address)
        try:
            pipe = self.client.pipeline()
            pipe.incr(by_name)
            pipe.expire(by_name, FAILURE_MEMORY)
            pipe.incr(by_address)
            pipe.expire(by_address, FAILURE_MEMORY)
            count = int(pipe.execute()[0])
            if count >= self.limit:
                # Locked out: the lock-out runs from this failure, however long the memory is.
                self.client.expire(by_name, max(self.lockout, 1))
        except redis.RedisError as error:
            log.warning("sign-in throttle unavailable (%s): this process's memory only", error)
            return self.local.failure_delay(name)
        return float(self.delay * 2 ** min(count - 1, MAX_DELAY_DOUBLINGS))

    def succeeded(self, name: str) -> None:
        with suppress(redis.RedisError):
            self.client.delete(self._keys(name, "")[0])
        self.local.forget_failures(name)


class HashingBusy(Exception):
    """More sign-ins wait for a password check than the app lets queue."""


class PasswordHashing:
    """argon2 on threads of its own: a crowd of sign-ins (or a guessing script) queues here and
    never takes the threads that answer API calls and pages. Past `queue` waiting, refused."""

    def __init__(self, threads: int = 2, queue: int = 64) -> None:
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="argon2")
        self.limit = queue
        self.waiting = 0

    async def run(self, check: Callable[[], T]) -> T:
        if self.waiting >= self.limit:
            raise HashingBusy()
        self.waiting += 1  # only ever changed on the event loop's thread
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, check)
        finally:
            self.waiting -= 1

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def csrf_matches(session: dict[str, Any], sent: str | None) -> bool:
    expected = session.get("csrf")
    return bool(expected and sent and hmac.compare_digest(str(expected), sent))


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def sessions_of(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _session_identity(request: Request) -> Identity | None:
    data = sessions_of(request).read(request)
    sid = data.get("sid")
    if not isinstance(sid, str):
        return None
    runtime = runtime_of(request)
    idle = timedelta(seconds=runtime.settings.review.session_idle_timeout)
    max_age = timedelta(seconds=runtime.settings.review.session_max_age)
    with runtime.db.transaction() as session:
        account = session_account(session, sid, idle, max_age)
        return None if account is None else Identity(account.name, account.role, "session")


def api_identity(*scopes: str) -> Callable[[Request], Identity]:
    """A dependency: the caller, who must hold a token of one of `scopes` or (for "review") a session.

    401 without valid credentials, 403 with credentials of another scope or without the CSRF
    header on a state-changing request made with a session cookie.
    """

    def dependency(request: Request) -> Identity:
        token = _bearer(request)
        if token is not None:
            with runtime_of(request).db.transaction() as session:
                identity = token_identity(session, token)
            if identity is None:
                raise HTTPException(
                    401, "authorization: unknown, revoked or expired token", {"WWW-Authenticate": "Bearer"}
                )
            if identity.scope not in scopes:
                raise HTTPException(403, f"authorization: a {identity.scope} token cannot do this")
            return identity
        identity = _session_identity(request)
        if identity is None:
            raise HTTPException(
                401, "authorization: a bearer token or a session is required", {"WWW-Authenticate": "Bearer"}
            )
        if "review" not in scopes:
            raise HTTPException(403, "authorization: needs a token of scope " + " or ".join(scopes))
        if request.method not in SAFE_METHODS and not csrf_matches(
            sessions_of(request).read(request), request.headers.get(CSRF_HEADER)
        ):
            raise HTTPException(403, f"{CSRF_HEADER}: missing or wrong CSRF token")
        return identity

    return dependency


class OutsideScope(LookupError):
    """The source named is not one the caller may see (or none of that name): answered as if
    the listing were absent, so that a token cannot learn what other sources hold."""


def source_scope(session: Session, identity: Identity, source: str | None) -> int | None:
    """The source whose listings the caller means: an ingest token's own, whatever it names; for
    a moderator, the source named, or None (any source's)."""
    if identity.scope == TokenScope.ingest:
        own = identity.source_id if identity.source_id is not None else DEFAULT_SOURCE_ID
        if source is not None and source_id_or_none(session, source) != own:
            raise OutsideScope(source)
        return own
    if source is None:
        return None
    found = source_id_or_none(session, source)
    if found is None:
        raise OutsideScope(source)
    return found


def source_id_or_none(session: Session, name: str) -> int | None:
    try:
        return source_id_named(session, name)
    except SourceError:
        return None


def page_identity(request: Request) -> Identity:
    """A dependency for pages: the signed-in moderator, else a redirect to the sign-in page."""
    identity = _session_identity(request)
    if identity is None:
        raise SignInRequired(request.url.path)
    return identity


def check_form_csrf(request: Request, sent: str | None) -> None:
    if not csrf_matches(sessions_of(request).read(request), sent):
        raise HTTPException(403, f"{CSRF_FIELD}: missing or wrong CSRF token; reload the page")


Moderator = Depends(page_identity)
Ingest = Depends(api_identity("ingest"))
Reader = Depends(api_identity("ingest", "review"))
Reviewer = Depends(api_identity("review"))
