"""Everyday commands: migrate, publish photos, run workers, refit on demand."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from common.delivery.queues import QUEUES
from common.sources.registry import SourceError, source_id_named
from vitrine.cli.root import app, console, state
from vitrine.local.folder import FolderError, publish_folder
from workers.command import worker_argv

db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: str = "head") -> None:
    """Create the database if needed and apply migrations up to REVISION (default: head)."""
    from common.db import ensure_database, migrate

    url = state(ctx).settings.services.database_url
    ensure_database(url)
    migrate(url, revision)
    console.print(f"database schema at {revision}")


@app.command()
def publish(
    ctx: typer.Context,
    images: Annotated[Path, typer.Option(help="Folder of product photos.")],
    labels: Annotated[Path | None, typer.Option(help="CSV with columns image and a category.")] = None,
    label_column: str = "category",
    title_column: Annotated[
        str | None, typer.Option(help="The labels file's column of listing titles (e.g. product_name).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1)] = None,
    seller_share: Annotated[
        float, typer.Option(min=0, max=1, help="Share of listings published with their category.")
    ] = 0.5,
    source: Annotated[str | None, typer.Option(help="The source they are listings of.")] = None,
) -> None:
    """Upload photos to object storage and publish one listing event per photo."""
    runtime = state(ctx).runtime
    try:
        with runtime.db.transaction() as session:
            source_id = source_id_named(session, source)
    except SourceError as error:
        raise typer.BadParameter(str(error), param_hint="--source") from None
    with Progress(console=console) as progress:
        task = progress.add_task("publishing", total=None)
        try:
            published, outcomes = publish_folder(
                runtime,
                images,
                labels,
                label_column=label_column,
                title_column=title_column,
                limit=limit,
                seller_share=seller_share,
                advance=lambda n: progress.advance(task, n),
                source_id=source_id,
            )
        except FolderError as error:
            raise typer.BadParameter(str(error)) from None
    console.print(f"published {len(published)} listings: {outcomes}")


@app.command()
def worker(
    queues: Annotated[
        str, typer.Argument(help="Comma-separated queues: embed, explain, refit, webhooks.")
    ] = "embed",
    loglevel: str = "INFO",
) -> None:
    """Start a Celery worker for QUEUES with the pool the design needs (never a forking one)."""
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = set(names) - set(QUEUES)
    if unknown:
        raise typer.BadParameter(f"unknown queues: {sorted(unknown)}")
    os.execv(sys.executable, worker_argv(names, sys.executable, loglevel))


@app.command()
def refit(ctx: typer.Context, k: Annotated[int | None, typer.Option(min=2)] = None) -> None:
    """Refit the clusters now (the same function the periodic task runs)."""
    from common.jobs.refit import SKIPPED_RUNNING, follow_up_refit
    from common.jobs.refit import refit as run_refit

    runtime = state(ctx).runtime
    result = run_refit(runtime.db, runtime.settings, k=k)
    if result.skipped_reason == SKIPPED_RUNNING:
        # Not a failure: the one running makes the new version.
        console.print(f"refit skipped: {result.skipped_reason}")
        return
    if result.skipped_reason:
        console.print(f"refit skipped: {result.skipped_reason}")
        raise typer.Exit(1)
    follow_up_refit(runtime.db, runtime.publisher, runtime.store, runtime.settings, result)
    console.print(
        {key: value for key, value in asdict(result).items() if key not in ("explain", "superseded")}
    )
