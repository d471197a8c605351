"""Tokens and sessions with a lifecycle: tokens expire, are revoked and rotated and record their
last use; signing out, an idle session or a disabled account ends a session whatever copies of
its cookie exist; failed sign-ins are counted in Redis by every process of the app."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from common.db import Database
from common.moderation.accounts import add_token
from common.runtime import Runtime
from common.schema import AccountSession, ApiToken
from common.settings import Settings
from review.app import create_app
from review.auth import SESSION_COOKIE, HashingBusy, PasswordHashing
from tests.fixtures.review import PASSWORD, Tokens, bearer
from tests.integration.review.test_auth import csrf_of, sign_in


def _vitrine(env: dict[str, str], *args: str) -> str:
    """The operator's command, as a process of its own."""
    command = [str(Path(sys.executable).parent / "vitrine"), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _token_row(db: Database, token_id: int) -> ApiToken:
    with db.transaction() as session:
        row = session.get(ApiToken, token_id)
        assert row is not None
        session.expunge(row)
        return row


def _id_of(db: Database, name: str) -> int:
    with db.transaction() as session:
        return int(session.execute(select(ApiToken.id).where(ApiToken.name == name)).scalars().first())


def test_tokens_list_revoke_rotate_and_expire(
    client: TestClient, tokens: Tokens, db: Database, child_env: dict[str, str]
) -> None:
    shop = bearer(tokens.ingest)
    assert client.get("/api/v1/listings/none", headers=shop).status_code == 404
    shop_id = _id_of(db, "shop")
    assert _token_row(db, shop_id).last_used_at is not None  # the call was recorded

    # Rotation: the new token works at once, the old one until the overlap ends.
    new = (
        _vitrine(child_env, "tokens", "rotate", str(shop_id), "--overlap-hours", "1").strip().splitlines()[-1]
    )
    assert new.startswith("vt_") and new != tokens.ingest
    assert client.get("/api/v1/listings/none", headers=bearer(new)).status_code == 404
    assert client.get("/api/v1/listings/none", headers=shop).status_code == 404
    with db.transaction() as session:
        session.execute(
            update(ApiToken)
            .where(ApiToken.id == shop_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    expired = client.get("/api/v1/listings/none", headers=shop)
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]

    listed = _vitrine(child_env, "tokens", "list")
    assert "expired" in listed and "active" in listed and tokens.ingest not in listed and new not in listed

    # Revocation, by name: every token of it, at once.
    _vitrine(child_env, "tokens", "revoke", "shop")
    assert client.get("/api/v1/listings/none", headers=bearer(new)).status_code == 401
    assert "revoked" in _vitrine(child_env, "tokens", "list")

    # A token made to expire.
    with db.transaction() as session:
        short = add_token(session, "flash-sale", "ingest", timedelta(seconds=-1))
    assert client.get("/api/v1/listings/none", headers=bearer(short)).status_code == 401


def test_sign_out_ends_the_session_for_every_copy_of_its_cookie(client: TestClient, tokens: Tokens) -> None:
    csrf = sign_in(client)
    copied = client.cookies.get(SESSION_COOKIE)
    assert client.get("/api/v1/stats").status_code == 200
    assert client.post("/sign-out", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    # The stolen copy is worth nothing now: the session ended on the server.
    client.cookies.set(SESSION_COOKIE, copied)
    assert client.get("/api/v1/stats").status_code == 401
    assert client.get("/review", follow_redirects=False).status_code == 303


def test_an_idle_session_ends(
    client: TestClient, tokens: Tokens, db: Database, review_settings: Settings
) -> None:
    sign_in(client)
    assert client.get("/api/v1/stats").status_code == 200
    idle = review_settings.review.session_idle_timeout
    with db.transaction() as session:
        session.execute(
            update(AccountSession).values(last_seen_at=datetime.now(UTC) - timedelta(seconds=idle + 5))
        )
    assert client.get("/api/v1/stats").status_code == 401
    with db.transaction() as session:
        assert session.execute(select(AccountSession.ended_at)).scalar_one() is not None


def _guess(client: TestClient, name: str, password: str) -> int:
    page = client.get("/sign-in")
    return client.post(
        "/sign-in", data={"name": name, "password": password, "csrf_token": csrf_of(page.text)}
    ).status_code


def test_failed_sign_ins_are_counted_by_every_process_then_locked_out(
    review_settings: Settings, runtime: Runtime, tokens: Tokens
) -> None:
    settings = review_settings.replace(sign_in_delay=0.0)
    limit = settings.review.sign_in_lockout_after
    # Two instances of the app, as two processes behind a load balancer: they share only Redis.
    apps = [create_app(settings, runtime), create_app(settings, runtime)]
    with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
        answers: list[int] = []
        # Parallel guessers, each a browser of its own (own cookies), spread over both instances.
        threads = [
            threading.Thread(target=lambda a=a: answers.append(_guess(TestClient(a), "alice", "wrong guess")))
            for a in apps * (limit // 2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(answers) == [401] * limit
        # Locked out in both, even with the right password, and told when to come back.
        for client in (first, second):
            page = client.get("/sign-in")
            locked = client.post(
                "/sign-in", data={"name": "alice", "password": PASSWORD, "csrf_token": csrf_of(page.text)}
            )
            assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
        # Another moderator is not locked out by alice's guesser.
        assert _guess(first, "bob", PASSWORD) == 200


def test_password_checks_run_on_threads_of_their_own_and_queue_is_bounded() -> None:
    hashing = PasswordHashing(threads=1, queue=1)
    release = threading.Event()

    async def scenario() -> tuple[str, bool]:
        first = asyncio.ensure_future(
            hashing.run(lambda: (release.wait(5), threading.current_thread().name)[1])
        )
        await asyncio.sleep(0.05)
        refused = False
        try:
            await hashing.run(lambda: "never")
        except HashingBusy:
            refused = True
        release.set()
        return await first, refused

    name, refused = asyncio.run(scenario())
    hashing.close()
    assert name.startswith("argon2") and refused
