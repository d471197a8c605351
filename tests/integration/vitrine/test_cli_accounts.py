"""`vitrine users` and `vitrine tokens`: hashed passwords, tokens shown once, clear refusals."""

from __future__ import annotations

from sqlalchemy import select
from typer.testing import CliRunner

from common.db import Database
from common.moderation.accounts import authenticate, token_identity
from common.schema import Account, ApiToken
from common.settings import Settings
from vitrine.cli import CommandState, app, register

register()
runner = CliRunner()


def _run(settings: Settings, *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), obj=CommandState(settings), input=stdin)
    return result.exit_code, result.output


def test_users_add_list_disable(settings: Settings, db: Database, clean_db: None) -> None:
    code, output = _run(settings, "users", "add", "mod1", "--password-stdin", stdin="long enough secret\n")
    assert code == 0, output
    code, output = _run(
        settings, "users", "add", "boss", "--role", "admin", "--password-stdin", stdin="another secret\n"
    )
    assert code == 0, output
    with db.transaction() as session:
        stored = session.execute(select(Account.password_hash).where(Account.name == "mod1")).scalar_one()
        assert stored.startswith("$argon2id$") and "long enough secret" not in stored
        assert authenticate(session, "mod1", "long enough secret") is not None
        assert authenticate(session, "mod1", "wrong") is None
    code, output = _run(settings, "users", "list")
    assert code == 0 and "mod1" in output and "admin" in output
    # Refusals name what is wrong and change nothing.
    assert _run(settings, "users", "add", "mod1", "--password-stdin", stdin="long enough secret\n")[1].count(
        "exists"
    )
    code, output = _run(settings, "users", "add", "mod2", "--password-stdin", stdin="short\n")
    assert code == 2 and "password" in output
    code, output = _run(settings, "users", "add", "mod3")
    assert code == 2 and "--password-stdin" in output
    assert _run(settings, "users", "disable", "mod1")[0] == 0
    with db.transaction() as session:
        assert authenticate(session, "mod1", "long enough secret") is None
    code, output = _run(settings, "users", "disable", "nobody")
    assert code == 2 and "no user 'nobody'" in output


def test_tokens_are_printed_once_and_stored_hashed(settings: Settings, db: Database, clean_db: None) -> None:
    assert _run(settings, "users", "add", "mod1", "--password-stdin", stdin="long enough secret\n")[0] == 0
    code, output = _run(settings, "tokens", "add", "mod1", "--scope", "review")
    assert code == 0, output
    token = output.strip().splitlines()[-1]
    assert token.startswith("vt_") and len(token) > 40
    code, output = _run(settings, "tokens", "add", "acme-shop", "--scope", "ingest")
    ingest = output.strip().splitlines()[-1]
    with db.transaction() as session:
        hashes = list(session.execute(select(ApiToken.token_hash)).scalars())
        assert token not in hashes and ingest not in hashes and len(hashes) == 2
        review = token_identity(session, token)
        assert review is not None and (review.name, review.scope) == ("mod1", "review")
        shop = token_identity(session, ingest)
        assert shop is not None and (shop.name, shop.scope, shop.role) == ("acme-shop", "ingest", None)
    # A review token acts as a moderator that exists.
    code, output = _run(settings, "tokens", "add", "ghost", "--scope", "review")
    assert code == 2 and "no enabled user 'ghost'" in output
    code, output = _run(settings, "tokens", "add", "x", "--scope", "admin")
    assert code == 2
