"""Who is calling: a bearer token (API) or a signed session cookie (browser), and CSRF for the latter.

A session cookie carries only the account id and the session's CSRF token, signed; the account
is read on every request, so a disabled account is signed out at once.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any

from fastapi import Depends, HTTPException, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from common.moderation.accounts import Identity, active_account, token_identity
from common.runtime import Runtime
from common.settings import ConfigError, Settings

SESSION_COOKIE = "vitrine_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Sign-in failures remembered per name, to slow down guessing: (count, time of the last one).
FAILURE_MEMORY = 15 * 60
MAX_DELAY_DOUBLINGS = 4


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
    account_id = data.get("account")
    if not isinstance(account_id, int):
        return None
    with runtime_of(request).db.transaction() as session:
        account = active_account(session, account_id)
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
                    401, "authorization: unknown or revoked token", {"WWW-Authenticate": "Bearer"}
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
