"""`vitrine demo`: bring the whole system up on one machine, run a folder of photos through it."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.progress import Progress
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from common import config, db
from common.cli import app, console
from common.cli.core import PublishedPhoto, publish_folder
from common.localservices import LocalServices, ServiceUnavailable, free_port, port_open

STATE_DIR = Path(".vitrine")
COMPOSE_HINT = "docker compose up -d redis postgres minio"


def _state_file(state_dir: Path) -> Path:
    return state_dir / "demo.json"


def _reachable(address: str, default_port: int) -> bool:
    """`address`: a service URL (postgresql://…, redis://…) or an S3 endpoint `host:port`."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    return port_open(parts.hostname or "127.0.0.1", parts.port or default_port)


def bring_up_services(state_dir: Path) -> tuple[dict[str, str], list[int], list[str]]:
    """Use the configured services when they answer; otherwise start private ones here."""
    settings = config.get_settings()
    local = LocalServices(state_dir / "services", detach=True)
    local.root.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = {}
    notes: list[str] = []
    try:
        if not _reachable(settings.database_url, 5432):
            server = local.start_postgres()
            env["VITRINE_DATABASE_URL"] = make_url(server).set(database="vitrine").render_as_string(False)
            notes.append(f"Postgres: none at {settings.database_url}; started a private one")
        if not _reachable(settings.broker_url, 6379):
            env["VITRINE_BROKER_URL"] = local.start_redis()
            notes.append(f"Redis: none at {settings.broker_url}; started a private one")
        if not _reachable(settings.s3_endpoint, 9000):
            if "VITRINE_S3_ENDPOINT" in os.environ:
                raise ServiceUnavailable(
                    f"no S3 endpoint answers at VITRINE_S3_ENDPOINT={settings.s3_endpoint}"
                )
            env.update(
                VITRINE_S3_ENDPOINT=local.start_s3(),
                VITRINE_S3_ACCESS_KEY="demo",
                VITRINE_S3_SECRET_KEY="demo-secret",
            )
            notes.append(
                f"S3: no MinIO at {settings.s3_endpoint}; using the embedded S3 endpoint "
                f"(moto server) at {env['VITRINE_S3_ENDPOINT']}"
            )
    except ServiceUnavailable as error:
        local.stop()
        console.print(f"[red]{error}[/red]\nStart the services with: [bold]{COMPOSE_HINT}[/bold]")
        raise typer.Exit(1) from None
    return env, [p.pid for p in local.processes], notes


def start_background(name: str, argv: list[str], log_dir: Path) -> int:
    log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child process
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return process.pid


def stop_demo(state_dir: Path) -> None:
    state = _state_file(state_dir)
    if not state.exists():
        console.print("no demo is running (nothing recorded in .vitrine/demo.json)")
        return
    pids: list[int] = json.loads(state.read_text())["pids"]
    for pid in reversed(pids):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.3)
    for pid in pids:
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    state.unlink()
    console.print(f"stopped {len(pids)} demo processes")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours still answers kill(0); reap it.
    try:
        finished, _status = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:
        return True


def _counts_by_status(external_ids: list[str]) -> Counter[str]:
    from common.models import Listing

    with db.session_scope() as session:
        rows = session.execute(
            select(Listing.status, func.count())
            .where(Listing.external_id.in_(external_ids))
            .group_by(Listing.status)
        ).all()
    return Counter({status: n for status, n in rows})


def _wait(external_ids: list[str], done: set[str], what: str, timeout: float) -> Counter[str]:
    with Progress(console=console) as progress:
        task = progress.add_task(what, total=len(external_ids))
        deadline = time.monotonic() + timeout
        while True:
            counts = _counts_by_status(external_ids)
            finished = sum(n for status, n in counts.items() if status in done)
            progress.update(task, completed=finished)
            if finished >= len(external_ids) or time.monotonic() > deadline:
                return counts
            time.sleep(1)


def _explanations_pending(external_ids: list[str]) -> int:
    from common.models import Listing, Suggestion

    with db.session_scope() as session:
        return session.execute(
            select(func.count())
            .select_from(Suggestion)
            .join(Listing, Listing.id == Suggestion.listing_id)
            .where(
                Listing.external_id.in_(external_ids),
                Suggestion.needs_review,
                Suggestion.gradcam_key.is_(None),
                Suggestion.explain_error.is_(None),
            )
        ).scalar_one()


def summarise(published: list[PublishedPhoto], refit_result: object) -> dict[str, object]:
    from common.models import Listing, Suggestion

    ids = [p.external_id for p in published]
    held_back = {p.external_id: p.category for p in published if p.category and not p.given_to_seller}
    with db.session_scope() as session:
        rows = session.execute(
            select(
                Listing.external_id,
                Listing.status,
                Listing.failure_reason,
                Suggestion.category,
                Suggestion.needs_review,
                Suggestion.gradcam_key,
            )
            .outerjoin(Suggestion, Suggestion.listing_id == Listing.id)
            .where(Listing.external_id.in_(ids))
        ).all()
    statuses = Counter(row[1] for row in rows)
    failures = Counter(row[2] for row in rows if row[2])
    judged = [(row[3], held_back[row[0]]) for row in rows if row[0] in held_back and row[3] is not None]
    accuracy = sum(s == t for s, t in judged) / len(judged) if judged else None
    return {
        "listings": len(rows),
        "by_status": dict(statuses),
        "failures": dict(failures),
        "needs_review": sum(1 for row in rows if row[4]),
        "overlays": sum(1 for row in rows if row[5]),
        "held_back": len(held_back),
        "accuracy_held_back": accuracy,
        "ari": getattr(refit_result, "ari", None),
        "nmi": getattr(refit_result, "nmi", None),
        "clustering_version": getattr(refit_result, "version_id", None),
    }


@app.command()
def demo(
    images: Annotated[Path | None, typer.Option(help="Folder of product photos.")] = None,
    labels: Annotated[Path | None, typer.Option(help="CSV with columns image and a category.")] = None,
    label_column: str = "category",
    limit: Annotated[int | None, typer.Option(min=1)] = None,
    seller_share: Annotated[float, typer.Option(min=0, max=1)] = 0.5,
    stop: Annotated[bool, typer.Option("--stop", help="Stop what a previous demo started.")] = False,
    state_dir: Path = STATE_DIR,
) -> None:
    """Start services, workers, beat, Flower and metrics; publish photos; refit; summarise."""
    if stop:
        stop_demo(state_dir)
        return
    if images is None:
        raise typer.BadParameter("--images is required (a folder of product photos)")
    if _state_file(state_dir).exists():
        console.print("a previous demo is still recorded; stopping it first")
        stop_demo(state_dir)
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    env, pids, notes = bring_up_services(state_dir)
    flower_password = secrets.token_urlsafe(12)
    flower_port = 5555 if not port_open("127.0.0.1", 5555) else free_port()
    metrics_port = 9108 if not port_open("127.0.0.1", 9108) else free_port()
    env.update(
        VITRINE_FLOWER_USER="demo",
        VITRINE_FLOWER_PASSWORD=flower_password,
        VITRINE_FLOWER_PORT=str(flower_port),
        VITRINE_METRICS_PORT=str(metrics_port),
        # Quick batches for a demo: each flush waits at most half a second.
        VITRINE_FLUSH_INTERVAL=os.environ.get("VITRINE_FLUSH_INTERVAL", "0.5"),
    )
    # The model choice travels with the demo's environment, so `vitrine status` sees the same backbone.
    env.update({k: os.environ[k] for k in ("VITRINE_MODEL", "VITRINE_WEIGHTS") if k in os.environ})
    os.environ.update(env)
    config.get_settings.cache_clear()
    db.get_engine.cache_clear()
    settings = config.get_settings()
    (state_dir / "demo.env").write_text("".join(f"export {k}='{v}'\n" for k, v in sorted(env.items())))
    _state_file(state_dir).write_text(json.dumps({"pids": pids}))

    db.ensure_database(settings.database_url)
    db.migrate()

    vitrine = [sys.executable, "-m", "common.cli"]
    celery = [sys.executable, "-m", "celery", "-A", "workers.app"]
    background = {
        "worker-embed": [*vitrine, "worker", "embed"],
        "worker-explain": [*vitrine, "worker", "explain"],
        "worker-refit": [*vitrine, "worker", "refit"],
        "beat": [*celery, "beat", "--schedule", str(state_dir / "celerybeat-schedule"), "--loglevel", "INFO"],
        "flower": [*vitrine, "flower", "--address", "127.0.0.1"],
        "metrics": [*vitrine, "metrics", "--address", "127.0.0.1"],
    }
    for name, argv in background.items():
        pids.append(start_background(name, argv, log_dir))
    _state_file(state_dir).write_text(json.dumps({"pids": pids}))
    for note in notes:
        console.print(f"[cyan]{note}[/cyan]")
    console.print(
        f"model: {settings.model}"
        + (f" (weights {settings.weights})" if settings.weights else " (weights from the Hugging Face cache)")
    )
    console.print(f"started {', '.join(background)}; logs in {log_dir}/")

    published, outcomes = publish_folder(images, labels, label_column, limit, seller_share)
    console.print(f"published {len(published)} listings: {outcomes}")
    ids = [p.external_id for p in published]
    embedding_started = time.monotonic()
    counts = _wait(ids, {"embedded", "suggested", "reviewed", "failed"}, "embedding", 3600)
    embedding_seconds = time.monotonic() - embedding_started
    if counts.get("queued"):
        console.print(f"[red]{counts['queued']} listings still queued; see {log_dir}/worker-embed.log[/red]")
        raise typer.Exit(1)

    from common.clustering import refit
    from common.events import send_explanations

    result = refit(settings)
    if result.skipped_reason:
        console.print(f"[yellow]refit skipped: {result.skipped_reason}[/yellow]")
    send_explanations(result.explain)
    _wait(ids, {"suggested", "reviewed", "failed"}, "suggesting", 300)
    with Progress(console=console) as progress:
        task = progress.add_task("explaining low-confidence suggestions", total=None)
        deadline = time.monotonic() + 900
        while (pending := _explanations_pending(ids)) and time.monotonic() < deadline:
            progress.update(task, description=f"explaining ({pending} to go)")
            time.sleep(1)

    summary = summarise(published, result)
    summary["embedding_seconds"] = round(embedding_seconds, 1)
    (state_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    accuracy = summary["accuracy_held_back"]
    console.print(
        f"\n[bold]Vitrine demo[/bold]: {summary['listings']} listings {summary['by_status']}"
        + (f", failures {summary['failures']}" if summary["failures"] else "")
    )
    console.print(
        f"embedded in {embedding_seconds:.0f}s, worker start-up included "
        f"({len(ids) / max(embedding_seconds, 1e-9):.1f} photos/s with {settings.model}, "
        f"VITRINE_DEVICE={settings.device})"
    )
    if result.ari is not None:
        console.print(
            f"clustering v{result.version_id}: k={result.k}, ARI {result.ari:.3f}, NMI {result.nmi:.3f} "
            f"against {result.n_labelled} labelled listings"
        )
    if accuracy is not None:
        console.print(
            f"suggestion accuracy on {summary['held_back']} listings published without their category: "
            f"{accuracy:.3f}"
        )
    console.print(
        f"{summary['needs_review']} suggestions need review; {summary['overlays']} Grad-CAM overlays in "
        f"bucket {settings.gradcam_bucket!r} at {settings.s3_endpoint} "
        "(vitrine explain LISTING_ID --out x.png)"
    )
    console.print(f"Flower:  http://127.0.0.1:{flower_port}  (user demo, password {flower_password})")
    console.print(f"Metrics: http://127.0.0.1:{metrics_port}/metrics")
    console.print(f"Talk to this demo: source {state_dir}/demo.env && vitrine status")
    console.print("Stop it: make stop  (or vitrine demo --stop)")
