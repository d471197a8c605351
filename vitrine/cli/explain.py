"""`vitrine explain`: the Grad-CAM overlay of one listing's suggestion, computed when missing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import select

from vitrine.cli.root import app, console, state

MAX_OVERLAY_BYTES = 64 * 1024 * 1024


@app.command()
def explain(
    ctx: typer.Context,
    external_id: Annotated[str, typer.Argument(help="The marketplace's id of the listing.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the overlay PNG.")] = None,
    source: Annotated[
        str | None, typer.Option(help="The listing's source, where several have this external id.")
    ] = None,
) -> None:
    """Write the Grad-CAM overlay PNG of EXTERNAL_ID, computing and storing it if needed."""
    from common.jobs.explain import explain_listings
    from common.object_store import overlay_url
    from common.schema import Listing, Suggestion
    from common.sources.registry import AmbiguousListing, SourceError, find_listing, source_id_named
    from common.vision.backbone import Backbone

    runtime = state(ctx).runtime
    settings, store = runtime.settings, runtime.store
    with runtime.db.transaction() as session:
        try:
            source_id = None if source is None else source_id_named(session, source)
            listing = find_listing(session, external_id, source_id)
        except (SourceError, AmbiguousListing) as error:
            console.print(f"[red]{error}[/red]")
            raise typer.Exit(1) from None
        row = (
            None
            if listing is None
            else session.execute(
                select(Listing.id, Suggestion.overlay_key)
                .outerjoin(Suggestion, Suggestion.listing_id == Listing.id)
                .where(Listing.id == listing.id)
            ).first()
        )
    if row is None:
        console.print(f"[red]no listing {external_id!r}[/red]")
        raise typer.Exit(1)
    internal_id, key = row
    if key is None or not store.exists(settings.store.overlay_bucket, key):
        backbone = Backbone.from_settings(settings, with_classifier=True)
        report = explain_listings(runtime.db, [internal_id], settings, backbone, store)
        if internal_id in report.failed:
            console.print(f"[red]cannot explain {external_id!r}:[/red] {report.failed[internal_id]}")
            raise typer.Exit(1)
        if internal_id in report.retry:
            console.print(f"[red]photo or object storage unavailable for {external_id!r}; try again[/red]")
            raise typer.Exit(1)
        if internal_id not in report.explained:
            console.print(f"[red]nothing to explain for {external_id!r}[/red]")
            raise typer.Exit(1)
        key = report.explained[internal_id].overlay_key
    target = out or Path(f"{external_id}-overlay.png")
    target.write_bytes(store.get_bytes(settings.store.overlay_bucket, key, max_bytes=MAX_OVERLAY_BYTES))
    console.print(f"wrote {target} ({key})")
    console.print(overlay_url(store, settings, key) or "(no URL: the object store did not answer)")
