"""Moderator accounts (argon2 password hashes) and API tokens (only their SHA-256 stored)."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from common.schema import Account, AccountRole, AccountSession, ApiToken, TokenScope
from common.sources.registry import SourceError, source_id_named

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
TOKEN_PREFIX = "vt_"
# A token's (and a session's) last use is written at most this often.
TOUCH_EVERY = timedelta(seconds=60)
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
    # An ingest token's source: the only listings it may send, read, change or delete.
    source_id: int | None = None


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
    """Disable the account: its sessions end at once, its review tokens stop working."""
    account = session.execute(select(Account).where(Account.name == name)).scalar_one_or_none()
    if account is None:
        raise AccountError(f"no user {name!r}")
    if account.disabled_at is None:
        account.disabled_at = datetime.now(UTC)
    session.execute(
        update(AccountSession)
        .where(AccountSession.account_id == account.id, AccountSession.ended_at.is_(None))
        .values(ended_at=datetime.now(UTC))
    )


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


def add_token(
    session: Session,
    name: str,
    scope: str,
    expires_in: timedelta | None = None,
    source: str | int | None = None,
) -> str:
    """Store a new token's hash and return the token itself (shown once, never stored).

    An ingest token belongs to `source` (a name or an id; the default source when None); a
    review token to no source: moderators work for the whole deployment.
    """
    if scope not in set(TokenScope):
        raise AccountError(f"scope {scope!r}: must be one of {', '.join(TokenScope)}")
    account_id = source_id = None
    if scope == TokenScope.review:
        if source is not None:
            raise AccountError("a review token acts for every source: --source is for ingest tokens")
        account = session.execute(select(Account).where(Account.name == name)).scalar_one_or_none()
        if account is None or account.disabled_at is not None:
            raise AccountError(f"a review token acts as a moderator: no enabled user {name!r}")
        account_id = account.id
    else:
        _check_name(name)
        try:
            source_id = source if isinstance(source, int) else source_id_named(session, source)
        except SourceError as error:
            raise AccountError(str(error)) from None
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + expires_in if expires_in is not None else None
    session.add(
        ApiToken(
            name=name,
            scope=scope,
            token_hash=_digest(token),
            account_id=account_id,
            source_id=source_id,
            expires_at=expires_at,
        )
    )
    session.flush()
    return token


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.execute(select(ApiToken).order_by(ApiToken.name, ApiToken.id)).scalars())


def _tokens(session: Session, ref: str) -> list[ApiToken]:
    """The tokens `ref` names: one by its id, or every token of that name."""
    query = (
        select(ApiToken).where(ApiToken.id == int(ref))
        if ref.isdigit()
        else select(ApiToken).where(ApiToken.name == ref)
    )
    found = list(session.execute(query.with_for_update()).scalars())
    if not found:
        raise AccountError(f"no token {ref!r} (an id or a name from `vitrine tokens list`)")
    return found


def revoke_token(session: Session, ref: str) -> list[ApiToken]:
    """Revoke the token with this id, or every token of this name: refused from the next call."""
    revoked = _tokens(session, ref)
    now = datetime.now(UTC)
    for token in revoked:
        token.revoked_at = token.revoked_at or now
    return revoked


def rotate_token(session: Session, token_id: int, overlap: timedelta) -> str:
    """A new token for the same holder and scope; the old one keeps working for `overlap` only,
    so a client can switch without a moment of refusals. Returns the new token."""
    old = session.get(ApiToken, token_id, with_for_update=True)
    if old is None or not _usable(old, datetime.now(UTC)):
        raise AccountError(f"no usable token {token_id} to rotate")
    lifetime = old.expires_at - old.created_at if old.expires_at is not None else None
    name = old.name
    if old.scope == TokenScope.review:
        account = session.get(Account, old.account_id)
        name = account.name if account is not None else name
    token = add_token(session, name, old.scope, lifetime, old.source_id)
    ends = datetime.now(UTC) + overlap
    old.expires_at = min(old.expires_at, ends) if old.expires_at is not None else ends
    return token


def _usable(token: ApiToken, now: datetime) -> bool:
    return token.revoked_at is None and (token.expires_at is None or token.expires_at > now)


def token_identity(session: Session, token: str) -> Identity | None:
    """Who holds this token, or None when it is unknown, revoked, expired or its moderator disabled."""
    now = datetime.now(UTC)
    row = session.execute(
        select(ApiToken, Account)
        .outerjoin(Account, Account.id == ApiToken.account_id)
        .where(ApiToken.token_hash == _digest(token))
    ).first()
    if row is None or not _usable(row[0], now):
        return None
    api_token, account = row
    if api_token.scope == TokenScope.review and (account is None or account.disabled_at is not None):
        return None
    session.execute(
        update(ApiToken)
        .where(ApiToken.id == api_token.id)
        .where(or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < now - TOUCH_EVERY))
        .values(last_used_at=now)
    )
    if api_token.scope == TokenScope.review:
        assert account is not None
        return Identity(account.name, account.role, api_token.scope)
    return Identity(api_token.name, None, api_token.scope, api_token.source_id)


# --- browser sessions ------------------------------------------------------------------------


def start_session(session: Session, account_id: int) -> str:
    """A new session for the account; returns its id for the cookie (only its hash is stored)."""
    sid = secrets.token_urlsafe(32)
    session.add(AccountSession(id_hash=_digest(sid), account_id=account_id))
    session.flush()
    return sid


def session_account(session: Session, sid: str, idle: timedelta, max_age: timedelta) -> Account | None:
    """The enabled account of a session that has not ended, idled out or grown too old."""
    row = session.get(AccountSession, _digest(sid))
    now = datetime.now(UTC)
    if row is None or row.ended_at is not None:
        return None
    if now - row.last_seen_at > idle or now - row.created_at > max_age:
        row.ended_at = now
        return None
    account = active_account(session, row.account_id)
    if account is not None and now - row.last_seen_at > TOUCH_EVERY:
        row.last_seen_at = now
    return account


def end_session(session: Session, sid: str) -> None:
    session.execute(
        update(AccountSession)
        .where(AccountSession.id_hash == _digest(sid), AccountSession.ended_at.is_(None))
        .values(ended_at=datetime.now(UTC))
    )
