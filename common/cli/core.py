"""Everyday commands: migrate, publish photos, run workers, refit on demand."""

from __future__ import annotations

import csv
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from common.cli import app, console
from common.config import get_settings
from common.queues import EMBED_QUEUE, EXPLAIN_QUEUE, REFIT_QUEUE, worker_argv

db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations up to REVISION (default: head)."""
    from common.db import ensure_database, migrate

    ensure_database(get_settings().database_url)
    migrate(revision=revision)
    console.print(f"database schema at {revision}")


def read_labels(path: Path, column: str) -> dict[str, str]:
    """image file name → category, from a CSV with an `image` column and COLUMN."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        if "image" not in fields or column not in fields:
            raise typer.BadParameter(f"{path} needs columns 'image' and {column!r}; it has {fields}")
        return {row["image"]: row[column] for row in reader if row[column]}


def list_images(directory: Path, limit: int | None) -> list[Path]:
    if not directory.is_dir():
        raise typer.BadParameter(f"not a directory: {directory}")
    images = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return images[:limit] if limit else images


def gives_seller_category(name: str, share: float) -> bool:
    """A stable choice of which listings carry the seller's category (the rest are held back)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


@dataclass(frozen=True)
class PublishedPhoto:
    external_id: str
    category: str | None  # from the labels file, published or held back
    given_to_seller: bool


def publish_folder(
    images: Path,
    labels: Path | None,
    label_column: str = "category",
    limit: int | None = None,
    seller_share: float = 0.5,
) -> tuple[list[PublishedPhoto], dict[str, int]]:
    """Upload a folder's photos and publish one listing per photo (listing id = file stem)."""
    from common.events import ListingEvent, publish_listings
    from common.storage import ObjectStore

    settings = get_settings()
    paths = list_images(images, limit)
    categories = read_labels(labels, label_column) if labels else {}
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket(settings.images_bucket)
    outcomes: dict[str, int] = {}
    published: list[PublishedPhoto] = []
    with Progress(console=console) as progress:
        task = progress.add_task("publishing", total=len(paths))
        for start in range(0, len(paths), 50):
            events = []
            for path in paths[start : start + 50]:
                category = categories.get(path.name)
                given = category is not None and gives_seller_category(path.name, seller_share)
                events.append(
                    ListingEvent(
                        listing_id=path.stem,
                        image_url=store.upload_photo(settings.images_bucket, path),
                        seller_category=category if given else None,
                    )
                )
                published.append(PublishedPhoto(path.stem, category, given))
            for result in publish_listings(events):
                outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
            progress.advance(task, len(events))
    return published, outcomes


@app.command()
def publish(
    images: Annotated[Path, typer.Option(help="Folder of product photos.")],
    labels: Annotated[Path | None, typer.Option(help="CSV with columns image and a category.")] = None,
    label_column: str = "category",
    limit: Annotated[int | None, typer.Option(min=1)] = None,
    seller_share: Annotated[
        float, typer.Option(min=0, max=1, help="Share of listings published with their category.")
    ] = 0.5,
) -> None:
    """Upload photos to object storage and publish one listing event per photo."""
    published, outcomes = publish_folder(images, labels, label_column, limit, seller_share)
    console.print(f"published {len(published)} listings: {outcomes}")


@app.command()
def worker(
    queues: Annotated[str, typer.Argument(help="Comma-separated: embed, explain, refit.")] = "embed",
    loglevel: str = "INFO",
) -> None:
    """Start a Celery worker for QUEUES with the pool the design needs (never a forking one)."""
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = set(names) - {EMBED_QUEUE, EXPLAIN_QUEUE, REFIT_QUEUE}
    if unknown:
        raise typer.BadParameter(f"unknown queues: {sorted(unknown)}")
    argv = worker_argv(names, sys.executable, loglevel)
    os.execv(sys.executable, argv)


@app.command()
def refit(k: Annotated[int | None, typer.Option(min=2)] = None) -> None:
    """Refit the clusters now (the same function the periodic task runs)."""
    from dataclasses import asdict

    from common.clustering import refit as run_refit
    from common.events import send_explanations

    result = run_refit(get_settings(), k=k)
    if result.skipped_reason:
        console.print(f"refit skipped: {result.skipped_reason}")
        raise typer.Exit(1)
    send_explanations(result.explain)
    summary = {key: value for key, value in asdict(result).items() if key != "explain"}
    console.print(summary)
