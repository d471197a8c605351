"""A source's webhooks and their delivery log: `vitrine webhooks add|list|pause|resume|remove|deliveries`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from common.sources.registry import SourceError, source_named
from common.webhooks import EVENTS
from common.webhooks.deliveries import STATUSES, deliveries
from common.webhooks.subscriptions import (
    WebhookError,
    add_subscription,
    list_subscriptions,
    remove_subscription,
    set_paused,
)
from vitrine.cli.root import app, console, refusing, render, state, when

webhooks_app = typer.Typer(
    help="Webhooks: a source's receivers of listing events, and what was delivered to them.",
    no_args_is_help=True,
)
app.add_typer(webhooks_app, name="webhooks")
T = TypeVar("T")
SHORT_EVENTS = ", ".join(event.removeprefix("listing.") for event in EVENTS)


@webhooks_app.command("add")
def webhooks_add(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="The receiver: an https (or http) URL on a public address.")],
    source: Annotated[str, typer.Option(help="The source whose listings it hears of.")] = "default",
    events: Annotated[
        str, typer.Option(help=f"Comma-separated, of: {SHORT_EVENTS}. Default: all of them.")
    ] = "",
) -> None:
    """Subscribe a receiver; its signing secret is printed once, alone on the last line."""
    settings = state(ctx).settings

    def add(session: Session) -> tuple[int, list[str], str]:
        subscription, secret = add_subscription(session, source, url, events.split(","), settings)
        return subscription.id, list(subscription.events), secret

    subscription_id, wanted, secret = _with_webhooks(ctx, add)
    console.print(
        f"webhook {subscription_id} of source {source}: {', '.join(wanted)}. "
        "Its signing secret (shown once; keep it secret):"
    )
    typer.echo(secret)


@webhooks_app.command("list")
def webhooks_list(
    ctx: typer.Context,
    source: Annotated[str | None, typer.Option(help="Only this source's.")] = None,
) -> None:
    """Every subscription: its id, source, URL, events and state (never its secret)."""

    def rows(session: Session) -> list[Any]:
        source_id = source_named(session, source).id if source is not None else None
        return list_subscriptions(session, source_id)

    table = Table("id", "source", "url", "events", "state", "created")
    for row in _with_webhooks(ctx, rows):
        events = ", ".join(event.removeprefix("listing.") for event in row.events)
        table.add_row(
            str(row.id), row.source, row.url, events, "paused" if row.paused else "active", row.created_at
        )
    typer.echo(render(table), nl=False)


@webhooks_app.command("pause")
def webhooks_pause(ctx: typer.Context, subscription_id: int) -> None:
    """Record nothing more for it; what it has pending waits until `resume`."""
    _with_webhooks(ctx, lambda session: set_paused(session, subscription_id, True))
    console.print(f"webhook {subscription_id} paused")


@webhooks_app.command("resume")
def webhooks_resume(ctx: typer.Context, subscription_id: int) -> None:
    """Record and send again."""
    _with_webhooks(ctx, lambda session: set_paused(session, subscription_id, False))
    console.print(f"webhook {subscription_id} resumed")


@webhooks_app.command("remove")
def webhooks_remove(ctx: typer.Context, subscription_id: int) -> None:
    """Delete a subscription and its delivery log; nothing more is sent to it."""
    _with_webhooks(ctx, lambda session: remove_subscription(session, subscription_id))
    console.print(f"webhook {subscription_id} removed")


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help=f"Only these: {', '.join(STATUSES)}.")] = None,
    source: Annotated[str | None, typer.Option(help="Only this source's.")] = None,
    subscription: Annotated[int | None, typer.Option(help="Only this subscription's.")] = None,
    external_id: Annotated[str | None, typer.Option(help="Only this listing's.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """The delivery log, newest first: tries, the receiver's last answer, when it is tried next."""
    if status is not None and status not in STATUSES:
        raise typer.BadParameter(f"one of {', '.join(STATUSES)}", param_hint="--status")

    def rows(session: Session) -> list[Any]:
        source_id = source_named(session, source).id if source is not None else None
        return deliveries(
            session,
            source_id=source_id,
            subscription_id=subscription,
            status=status,
            external_id=external_id,
            limit=limit,
        )

    found = _with_webhooks(ctx, rows)
    if as_json:
        for row in found:
            typer.echo(json.dumps(asdict(row), default=_iso))
        return
    table = Table("id", "hook", "listing", "event", "status", "tries", "last answer", "next try", "created")
    for row in found:
        answer = row.last_error or (str(row.last_status) if row.last_status is not None else "")
        table.add_row(
            str(row.id),
            str(row.subscription_id),
            row.external_id,
            row.event.removeprefix("listing."),
            row.status,
            str(row.attempts),
            answer[:60],
            when(row.next_attempt_at, seconds=True),
            when(row.created_at, seconds=True),
        )
    typer.echo(render(table), nl=False)


def _with_webhooks(ctx: typer.Context, work: Callable[[Session], T]) -> T:
    return refusing(ctx, work, WebhookError, SourceError)


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)
