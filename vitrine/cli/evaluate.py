"""`vitrine evaluate`: cluster quality and suggestion accuracy of backbones on a labelled photo folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vitrine.cli.root import app, console, state
from vitrine.local.folder import FolderError, list_images, read_labels


@app.command()
def evaluate(
    ctx: typer.Context,
    images: Annotated[Path, typer.Option(help="Folder of product photos.")],
    labels: Annotated[Path, typer.Option(help="CSV with an `image` column and a category column.")],
    model: Annotated[
        list[str],
        typer.Option(help="timm model, NAME or NAME=WEIGHTS (a local weights file); repeatable."),
    ],
    label_column: Annotated[str, typer.Option(help="Category column of the label file.")] = "category",
    title_column: Annotated[
        str | None, typer.Option(help="Listing-title column of the label file (title and fused methods).")
    ] = None,
    crops: Annotated[
        str, typer.Option(help="Comma-separated crops to compare: center, full.")
    ] = "center,full",
    cache: Annotated[
        Path | None, typer.Option(help="Folder keeping embeddings between runs (per backbone and crop).")
    ] = None,
    reductions: Annotated[str, typer.Option(help="Comma-separated: none, pca, tsne.")] = "none,pca,tsne",
    k: Annotated[int | None, typer.Option(min=2, help="Clusters (default: number of categories).")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="KMeans seeds per setting.")] = 3,
    limit: Annotated[int | None, typer.Option(min=1, help="Stratified sample of this many photos.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for report.json, report.html and figures.")] = Path(
        "evaluation"
    ),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    precision: Annotated[
        str, typer.Option(help="fp32, or int8 (CPU) / bf16 (CUDA, CPU with bf16) beside fp32 in one report.")
    ] = "fp32",
) -> None:
    """Embed each photo once per model; report ARI/NMI of KMeans and held-out suggestion accuracy."""
    from vitrine.evaluation.dataset import EvaluationError, ModelSpec
    from vitrine.evaluation.study import evaluate as run_evaluation

    try:
        label_map = read_labels(labels, label_column)
        title_map = read_labels(labels, title_column) if title_column else None
        paths = list_images(images)
    except FolderError as error:
        raise typer.BadParameter(str(error)) from None
    try:
        specs = [ModelSpec.parse(text) for text in model]
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:

            def start(description: str, total: int) -> Callable[[int], None]:
                task = progress.add_task(description, total=total)
                return lambda n: progress.advance(task, n)

            report = run_evaluation(
                paths,
                label_map,
                specs,
                out,
                state(ctx).settings,
                reductions=[r.strip() for r in reductions.split(",") if r.strip()],
                k=k,
                seeds=seeds,
                limit=limit,
                device=device,
                batch_size=batch_size,
                progress=start,
                titles=title_map,
                crops=[c.strip() for c in crops.split(",") if c.strip()],
                cache=cache,
                precision=precision,
            )
    except EvaluationError as error:
        raise typer.BadParameter(str(error)) from None

    table = Table(title=f"clusters vs categories (k={report['k']}, n={report['n_images']})")
    for column in ("model", "reduction", "ARI", "NMI"):
        table.add_column(column)
    for row in report["results"]:
        table.add_row(
            row["model"], row["reduction"], f"{row['ari']:.3f} ± {row['ari_std']:.3f}", f"{row['nmi']:.3f}"
        )
    console.print(table)
    target = report["settings"]["target_precision"]
    suggestions = Table(title=f"suggestions for held-out listings (target precision {target})")
    for column in ("model", "method", "accuracy", "coverage", "precision est./real.", "ECE"):
        suggestions.add_column(column)
    for row in report["suggestions"]:
        suggestions.add_row(
            row["model"],
            row["method"],
            f"{row['accuracy']:.3f} ± {row['accuracy_std']:.3f}",
            _figure(row["coverage_at_target"]),
            f"{_figure(row['estimated_precision'])} / {_figure(row['realised_precision'])}",
            _figure(row["ece"]),
        )
    console.print(suggestions)
    noise = Table(title="sellers' wrong categories: seller_disagrees flags")
    for column in ("model", "method", "noise", "precision", "recall", "accuracy"):
        noise.add_column(column)
    for row in report["seller_noise"]:
        noise.add_row(
            row["model"],
            row["method"],
            f"{row['noise']:.0%}",
            _figure(row["flag_precision"]),
            _figure(row["flag_recall"]),
            _figure(row["accuracy"]),
        )
    console.print(noise)
    crop_table = Table(title="crops")
    for column in ("model", "crop", "ARI", "accuracy"):
        crop_table.add_column(column)
    for row in report["crops"]:
        crop_table.add_row(row["model"], row["crop"], _figure(row["ari"]), _figure(row["accuracy"]))
    console.print(crop_table)
    for row in report["precision_cosine"]:
        console.print(
            f"{row['model']}: cosine fp32 vs {row['precision']} mean {row['cosine_mean']:.4f}, "
            f"5th percentile {row['cosine_p05']:.4f}, min {row['cosine_min']:.4f}"
        )
    if report["unreadable"]:
        console.print(
            f"[yellow]{len(report['unreadable'])} unreadable images[/yellow] (listed in the report)"
        )
    console.print(f"report: {out / 'report.html'}")


@app.command("queue-groups")
def queue_groups(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """How many moderator actions resolve the waiting queue with the desk's groups and without
    (walked as one moderator, then rolled back: nothing is decided)."""
    from common.db import Database
    from vitrine.evaluation.groups import queue_actions

    database = Database(state(ctx).settings.services.database_url)
    try:
        figures = queue_actions(database)
    finally:
        database.dispose()
    if as_json:
        print(json.dumps(figures))
        return
    alone, together = figures["without_groups"], figures["with_groups"]
    console.print(
        f"{alone['waiting']} waiting: {alone['actions']} actions one by one,"
        f" {together['actions']} with groups"
        f" ({together['groups']} groups holding {together['grouped_items']} more items;"
        f" {together['mixed_groups']} mixing known labels; cosine ≥ {figures['similarity']})"
    )


def _figure(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
