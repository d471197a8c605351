"""Moderator accounts and API tokens: `vitrine users ...` and `vitrine tokens ...`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from common.moderation.accounts import AccountError, add_token, add_user, disable_user, list_users
from common.schema import AccountRole, TokenScope
from vitrine.cli.root import app, console, state

users_app = typer.Typer(help="Moderator accounts of the review app.", no_args_is_help=True)
tokens_app = typer.Typer(help="Bearer tokens for the HTTP API.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")


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
    try:
        with state(ctx).runtime.db.transaction() as session:
            add_user(session, name, password, role)
    except AccountError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
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
    typer.echo(_render(table))


@users_app.command("disable")
def users_disable(ctx: typer.Context, name: str) -> None:
    """Disable an account: its sessions and review tokens stop working at once."""
    try:
        with state(ctx).runtime.db.transaction() as session:
            disable_user(session, name)
    except AccountError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    console.print(f"user {name} disabled")


@tokens_app.command("add")
def tokens_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="review: the moderator it acts as; ingest: a label.")],
    scope: Annotated[TokenScope, typer.Option(help="ingest (marketplaces) or review (moderators).")],
) -> None:
    """Make a token; it is printed once, alone on the last line, and only its hash is kept."""
    try:
        with state(ctx).runtime.db.transaction() as session:
            token = add_token(session, name, scope)
    except AccountError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    console.print(f"{scope} token for {name} (shown once; keep it secret):")
    typer.echo(token)


def _render(table: Table) -> str:
    from rich.console import Console

    out = Console(width=120, record=True)
    with out.capture() as captured:
        out.print(table)
    return captured.get()
