"""`vitrine demo`: bring the whole system up on one machine, run a folder of photos through it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress
from sqlalchemy.engine import make_url

from common.jobs.refit import RefitResult, follow_up_refit, refit
from common.runtime import Runtime
from common.settings import Settings
from vitrine.cli.root import app, console, state
from vitrine.local import supervision
from vitrine.local.folder import FolderError, publish_folder
from vitrine.local.services import ServiceUnavailable

STATE_DIR = Path(".vitrine")
EMBED_TIMEOUT = 3600.0
SUGGEST_TIMEOUT = 300.0
EXPLAIN_TIMEOUT = 900.0


@app.command()
def demo(
    ctx: typer.Context,
    images: Annotated[Path | None, typer.Option(help="Folder of product photos.")] = None,
    labels: Annotated[Path | None, typer.Option(help="CSV with columns image and a category.")] = None,
    label_column: str = "category",
    title_column: Annotated[str | None, typer.Option(help="Listing-title column of the labels file.")] = None,
    limit: Annotated[int | None, typer.Option(min=1)] = None,
    seller_share: Annotated[float, typer.Option(min=0, max=1)] = 0.5,
    stop: Annotated[bool, typer.Option("--stop", help="Stop what a previous demo started.")] = False,
    state_dir: Path = STATE_DIR,
    keep: Annotated[
        bool, typer.Option("--keep", help="Continue the demo database of the last run instead of a new one.")
    ] = False,
) -> None:
    """Start services, workers, beat, Flower and metrics; publish photos; refit; summarise."""
    if stop:
        _stop(state_dir)
        return
    if images is None:
        raise typer.BadParameter("--images is required (a folder of product photos)")
    if supervision.state_file(state_dir).exists():
        console.print("a previous demo is still recorded; stopping it first")
        _stop(state_dir)
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    environment = _start(state(ctx).settings, state_dir, log_dir, keep)
    runtime = Runtime(environment.settings)
    try:
        try:
            published, outcomes = publish_folder(
                runtime,
                images,
                labels,
                label_column=label_column,
                title_column=title_column,
                limit=limit,
                seller_share=seller_share,
            )
        except FolderError as error:
            raise typer.BadParameter(str(error)) from None
        console.print(f"published {len(published)} listings: {outcomes}")
        ids = [p.external_id for p in published]
        embedding_seconds = _embed(runtime, ids, log_dir)
        result = _refit_and_explain(runtime, ids)
        summary = supervision.summarise(runtime, published, result)
        summary["embedding_seconds"] = round(embedding_seconds, 1)
        (state_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        _print_summary(runtime, environment, summary, result, len(ids), state_dir)
    finally:
        runtime.close()


def _stop(state_dir: Path) -> None:
    stopped = supervision.stop(state_dir)
    if stopped is None:
        console.print(f"no demo is running (nothing recorded in {supervision.state_file(state_dir)})")
    else:
        console.print(f"stopped {stopped} demo processes")


def _start(settings: Settings, state_dir: Path, log_dir: Path, keep: bool) -> supervision.DemoEnvironment:
    try:
        environment = supervision.bring_up_services(
            settings,
            state_dir,
            s3_configured="VITRINE_S3_ENDPOINT" in os.environ,
        )
    except ServiceUnavailable as error:
        console.print(f"[red]{error}[/red]\nStart the services with: [bold]{supervision.COMPOSE_HINT}[/bold]")
        raise typer.Exit(1) from None
    supervision.configure_processes(environment)
    supervision.write_environment(environment, state_dir)
    supervision.prepare_database(environment, keep)
    started = supervision.start_processes(environment, state_dir, log_dir)
    for note in environment.notes:
        console.print(f"[cyan]{note}[/cyan]")
    settings = environment.settings
    weights = (
        f" (weights {settings.backbone.weights})"
        if settings.backbone.weights
        else " (weights from the Hugging Face cache)"
    )
    database = make_url(settings.services.database_url)
    kept = "continued (--keep)" if keep else "new for this run"
    console.print(f"database: {database.database} on {database.host}:{database.port or 5432} ({kept})")
    console.print(f"model: {settings.backbone.model}{weights}")
    console.print(f"started {', '.join(started)}; logs in {log_dir}/")
    return environment


def _embed(runtime: Runtime, ids: list[str], log_dir: Path) -> float:
    """Wait for the embed worker; returns the seconds it took (worker start-up included)."""
    started = time.monotonic()
    with Progress(console=console) as progress:
        task = progress.add_task("embedding", total=len(ids))
        counts = supervision.wait_for_statuses(
            runtime,
            ids,
            supervision.DONE_EMBEDDING,
            EMBED_TIMEOUT,
            lambda n: progress.update(task, completed=n),
        )
    if counts.get("queued"):
        console.print(f"[red]{counts['queued']} listings still queued; see {log_dir}/worker-embed.log[/red]")
        raise typer.Exit(1)
    return time.monotonic() - started


def _refit_and_explain(runtime: Runtime, ids: list[str]) -> RefitResult:
    result = refit(runtime.db, runtime.settings)
    if result.skipped_reason:
        console.print(f"[yellow]refit skipped: {result.skipped_reason}[/yellow]")
    else:
        follow_up_refit(runtime.db, runtime.publisher, runtime.store, runtime.settings, result)
    with Progress(console=console) as progress:
        task = progress.add_task("suggesting", total=len(ids))
        supervision.wait_for_statuses(
            runtime,
            ids,
            supervision.DONE_SUGGESTING,
            SUGGEST_TIMEOUT,
            lambda n: progress.update(task, completed=n),
        )
    with Progress(console=console) as progress:
        task = progress.add_task("explaining low-confidence suggestions", total=None)
        deadline = time.monotonic() + EXPLAIN_TIMEOUT
        while (pending := supervision.explanations_pending(runtime, ids)) and time.monotonic() < deadline:
            progress.update(task, description=f"explaining ({pending} to go)")
            time.sleep(1)
    return result


def _print_summary(
    runtime: Runtime,
    environment: supervision.DemoEnvironment,
    summary: dict[str, object],
    result: RefitResult,
    n: int,
    state_dir: Path,
) -> None:
    settings = runtime.settings
    seconds = float(summary["embedding_seconds"])  # type: ignore[arg-type]
    failures = f", failures {summary['failures']}" if summary["failures"] else ""
    console.print(
        f"\n[bold]Vitrine demo[/bold]: {summary['listings']} listings {summary['by_status']}{failures}"
    )
    console.print(
        f"embedded in {seconds:.0f}s, worker start-up included "
        f"({n / max(seconds, 1e-9):.1f} photos/s with {settings.backbone.model}, "
        f"VITRINE_DEVICE={settings.backbone.device})"
    )
    if result.ari is not None and result.nmi is not None:
        console.print(
            f"clustering v{result.version_id}: k={result.k}, ARI {result.ari:.3f}, NMI {result.nmi:.3f} "
            f"against {result.n_labelled} labelled listings"
        )
    accuracy = summary["accuracy_held_back"]
    if isinstance(accuracy, float):
        console.print(
            f"suggestion accuracy on {summary['held_back']} listings published without their category: "
            f"{accuracy:.3f}"
        )
    coverage, precision = summary["coverage_held_back"], summary["realised_precision_held_back"]
    if isinstance(coverage, float):
        console.print(
            f"auto-accepted without review: {coverage:.1%} of them, right on "
            f"{'–' if precision is None else f'{precision:.1%}'} "
            f"(target {settings.suggestions.target_precision:.0%})"
        )
    console.print(
        f"{summary['needs_review']} suggestions need review; {summary['overlays']} Grad-CAM overlays in "
        f"bucket {settings.store.overlay_bucket!r} at {settings.store.s3_endpoint} "
        "(vitrine explain LISTING_ID --out x.png)"
    )
    login = f"user demo, password {environment.flower_password}"
    console.print(f"Flower:  http://127.0.0.1:{settings.ops.flower_port}  ({login})")
    console.print(f"Metrics: http://127.0.0.1:{settings.ops.metrics_port}/metrics")
    # On one line whatever the terminal's width: a person copies the password from it.
    console.print(
        f"Review:  http://127.0.0.1:{environment.review_port}/review  "
        f"(user {supervision.DEMO_MODERATOR}, password {environment.moderator_password})",
        soft_wrap=True,
    )
    console.print(f"Talk to this demo: source {state_dir}/demo.env && vitrine status")
    console.print("Stop it: make stop  (or vitrine demo --stop)")
