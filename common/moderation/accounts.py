"""Moderator accounts (argon2 password hashes) and API tokens (only their SHA-256 stored)."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.schema import Account, AccountRole, ApiToken, TokenScope

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
TOKEN_PREFIX = "vt_"
_hasher = PasswordHasher()
# Verified against when the name is unknown, so that a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A request about accounts or tokens that cannot be done; the message says why."""


@dataclass(frozen=True)
class Identity:
    """Who is calling: a signed-in moderator, or the holder of a token of some scope."""

    name: str
    role: str | None  # the account's role; None for an ingest token (a marketplace, no account)
    scope: str  # "session" for a browser, else the token's scope


def _check_name(name: str) -> None:
    if not NAME.match(name):
        raise AccountError(f"name {name!r}: use 1 to 100 letters, digits or . _ @ - (starting with one)")


def add_user(session: Session, name: str, password: str, role: str = AccountRole.moderator) -> Account:
    _check_name(name)
    if role not in set(AccountRole):
        raise AccountError(f"role {role!r}: must be one of {', '.join(AccountRole)}")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"password: must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    if session.execute(select(Account.id).where(Account.name == name)).first() is not None:
        raise AccountError(f"user {name!r} exists already")
    account = Account(name=name, role=role, password_hash=_hasher.hash(password))
    session.add(account)
    session.flush()
    return account


def list_users(session: Session) -> list[Account]:
    return list(session.execute(select(Account).order_by(Account.name)).scalars())


def disable_user(session: Session, name: str) -> None:
    account = session.execute(select(Account).where(Account.name == name)).scalar_one_or_none()
    if account is None:
        raise AccountError(f"no user {name!r}")
    if account.disabled_at is None:
        account.disabled_at = datetime.now(UTC)


def authenticate(session: Session, name: str, password: str) -> Account | None:
    """The enabled account with this name and password, or None (same cost either way)."""
    account = session.execute(select(Account).where(Account.name == name)).scalar_one_or_none()
    stored = account.password_hash if account is not None else _DUMMY_HASH
    try:
        _hasher.verify(stored, password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return None
    if account is None or account.disabled_at is not None:
        return None
    if _hasher.check_needs_rehash(stored):
        account.password_hash = _hasher.hash(password)
    return account


def active_account(session: Session, account_id: int) -> Account | None:
    account = session.get(Account, account_id)
    return account if account is not None and account.disabled_at is None else None


def _digest(token: str) -> str:
    # Tokens are 256 random bits: a fast hash suffices, and each API call can afford it.
    return hashlib.sha256(token.encode()).hexdigest()


def add_token(session: Session, name: str, scope: str) -> str:
    """Store a new token's hash and return the token itself (shown once, never stored)."""
    if scope not in set(TokenScope):
        raise AccountError(f"scope {scope!r}: must be one of {', '.join(TokenScope)}")
    account_id = None
    if scope == TokenScope.review:
        account = session.execute(select(Account).where(Account.name == name)).scalar_one_or_none()
        if account is None or account.disabled_at is not None:
            raise AccountError(f"a review token acts as a moderator: no enabled user {name!r}")
        account_id = account.id
    else:
        _check_name(name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, scope=scope, token_hash=_digest(token), account_id=account_id))
    session.flush()
    return token


def token_identity(session: Session, token: str) -> Identity | None:
    """Who holds this token, or None when it is unknown or its moderator is disabled."""
    row = session.execute(
        select(ApiToken, Account)
        .outerjoin(Account, Account.id == ApiToken.account_id)
        .where(ApiToken.token_hash == _digest(token))
    ).first()
    if row is None:
        return None
    api_token, account = row
    if api_token.scope == TokenScope.review:
        if account is None or account.disabled_at is not None:
            return None
        return Identity(account.name, account.role, api_token.scope)
    return Identity(api_token.name, None, api_token.scope)
