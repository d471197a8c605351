"""Moderator accounts, sources and API tokens: `vitrine users ...`, `vitrine sources ...` and
`vitrine tokens ...`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from common.moderation.accounts import (
    AccountError,
    add_token,
    add_user,
    disable_user,
    list_tokens,
    list_users,
    revoke_token,
    rotate_token,
)
from common.schema import AccountRole, TokenScope
from common.sources.registry import SourceError, add_source, list_sources, source_names
from vitrine.cli.root import app, console, refusing, render, state, when

users_app = typer.Typer(help="Moderator accounts of the review app.", no_args_is_help=True)
sources_app = typer.Typer(
    help="Where listings come from: a marketplace or a storefront, with tokens of its own.",
    no_args_is_help=True,
)
tokens_app = typer.Typer(help="Bearer tokens for the HTTP API.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(sources_app, name="sources")
app.add_typer(tokens_app, name="tokens")
T = TypeVar("T")


@users_app.command("add")
def users_add(
    ctx: typer.Context,
    name: str,
    role: Annotated[AccountRole, typer.Option(help="moderator or admin.")] = AccountRole.moderator,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
    ] = False,
) -> None:
    """Add an account; its password is read from stdin, never from the command line."""
    if not password_stdin:
        raise typer.BadParameter(
            "give the password on stdin with --password-stdin", param_hint="--password-stdin"
        )
    password = sys.stdin.readline().rstrip("\r\n")
    _with_accounts(ctx, lambda session: add_user(session, name, password, role))
    console.print(f"user {name} added ({role})")


@users_app.command("list")
def users_list(ctx: typer.Context) -> None:
    """Every account, with its role and whether it is disabled."""
    with state(ctx).runtime.db.transaction() as session:
        accounts = list_users(session)
    table = Table("name", "role", "created", "disabled")
    for account in accounts:
        disabled = account.disabled_at.isoformat(timespec="seconds") if account.disabled_at else ""
        table.add_row(account.name, account.role, account.created_at.isoformat(timespec="seconds"), disabled)
    typer.echo(render(table))


@users_app.command("disable")
def users_disable(ctx: typer.Context, name: str) -> None:
    """Disable an account: its sessions and review tokens stop working at once."""
    _with_accounts(ctx, lambda session: disable_user(session, name))
    console.print(f"user {name} disabled")


@sources_app.command("add")
def sources_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Lower-case letters, digits or . _ -, e.g. acme-shop.")],
) -> None:
    """Add a source; give it ingest tokens with `vitrine tokens add NAME --scope ingest --source`."""
    _with_accounts(ctx, lambda session: add_source(session, name))
    console.print(f"source {name} added")


@sources_app.command("list")
def sources_list(ctx: typer.Context) -> None:
    """Every source, with its number of listings and of ingest tokens."""
    table = Table("id", "name", "listings", "tokens", "created")
    for source, listings, tokens in _with_accounts(ctx, list_sources):
        table.add_row(str(source.id), source.name, str(listings), str(tokens), when(source.created_at))
    typer.echo(render(table), nl=False)


@tokens_app.command("add")
def tokens_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="review: the moderator it acts as; ingest: a label.")],
    scope: Annotated[TokenScope, typer.Option(help="ingest (marketplaces) or review (moderators).")],
    expires_in_days: Annotated[
        float | None, typer.Option("--expires-in-days", min=0.001, help="Refused after this many days.")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(help="ingest: the source it sends for and reads from (default: `default`)."),
    ] = None,
) -> None:
    """Make a token; it is printed once, alone on the last line, and only its hash is kept."""
    lifetime = timedelta(days=expires_in_days) if expires_in_days is not None else None
    token = _with_accounts(ctx, lambda session: add_token(session, name, scope, lifetime, source))
    whose = f" of source {source}" if source else ""
    console.print(f"{scope} token for {name}{whose} (shown once; keep it secret):")
    typer.echo(token)


@tokens_app.command("list")
def tokens_list(ctx: typer.Context) -> None:
    """Every token: its id, holder, scope, state, expiry and last use (never the token)."""
    now = datetime.now(UTC)

    def rows(session: Session) -> list[tuple[str, ...]]:
        tokens = list_tokens(session)
        names = source_names(session, {t.source_id for t in tokens if t.source_id is not None})
        return [
            (
                str(t.id),
                t.name,
                t.scope,
                names.get(t.source_id, "") if t.source_id is not None else "",
                "revoked"
                if t.revoked_at
                else "expired"
                if t.expires_at and t.expires_at <= now
                else "active",
                when(t.created_at),
                when(t.expires_at),
                when(t.last_used_at),
            )
            for t in tokens
        ]

    table = Table("id", "name", "scope", "source", "state", "created", "expires", "last used")
    for row in _with_accounts(ctx, rows):
        table.add_row(*row)
    typer.echo(render(table), nl=False)


@tokens_app.command("revoke")
def tokens_revoke(
    ctx: typer.Context,
    token: Annotated[str, typer.Argument(help="A token id, or a name: every token of that name.")],
) -> None:
    """Refuse a token from its next use on (401), in every process at once."""
    ids = _with_accounts(ctx, lambda session: [t.id for t in revoke_token(session, token)])
    console.print(f"revoked: {', '.join(map(str, ids))}")


@tokens_app.command("rotate")
def tokens_rotate(
    ctx: typer.Context,
    token_id: Annotated[int, typer.Argument(help="The id of the token to replace.")],
    overlap_hours: Annotated[
        float, typer.Option(min=0, help="Hours the old token keeps working, so clients can switch.")
    ] = 24.0,
) -> None:
    """A new token for the same holder and scope; the old one expires after the overlap."""
    token = _with_accounts(
        ctx, lambda session: rotate_token(session, token_id, timedelta(hours=overlap_hours))
    )
    console.print(
        f"token {token_id} replaced; it stops working in {overlap_hours:g} h. The new one (shown once):"
    )
    typer.echo(token)


def _with_accounts(ctx: typer.Context, work: Callable[[Session], T]) -> T:
    return refusing(ctx, work, AccountError, SourceError)
