"""The demo's supervision: services, background processes, a folder of photos through the system.

`vitrine demo` (and `make demo`) drive it; every process it starts is recorded, and `stop` stops
those and nothing else.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import delete, func, select
from sqlalchemy.engine import make_url

from common.db import Database, drop_database, ensure_database, migrate
from common.jobs.refit import RefitResult
from common.moderation.accounts import add_user
from common.runtime import Runtime
from common.schema import Account, Listing, Suggestion
from common.settings import Settings, with_environment
from vitrine.local.folder import PublishedPhoto
from vitrine.local.services import LocalServices, ServiceUnavailable, free_port, port_open

COMPOSE_HINT = "docker compose up -d redis postgres minio"
# The demo's own database on the configured server: a demo never continues another system's data.
DEMO_DATABASE = "vitrine_demo"
DEMO_MODERATOR = "demo-moderator"
DONE_EMBEDDING = {"embedded", "suggested", "reviewed", "failed"}
DONE_SUGGESTING = {"suggested", "reviewed", "failed"}


def state_file(state_dir: Path) -> Path:
    return state_dir / "demo.json"


def _reachable(address: str, default_port: int) -> bool:
    """`address`: a service URL (postgresql://…, redis://…) or an S3 endpoint `host:port`."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    return port_open(parts.hostname or "127.0.0.1", parts.port or default_port)


@dataclass
class DemoEnvironment:
    """VITRINE_* variables of the demo's services and processes, and what was started for it."""

    env: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    flower_password: str = ""
    moderator_password: str = ""
    review_port: int = 8000

    @property
    def settings(self) -> Settings:
        return with_environment(self.env)


def bring_up_services(settings: Settings, state_dir: Path, s3_configured: bool) -> DemoEnvironment:
    """Use the configured services when they answer; otherwise start private ones here.

    Raises `ServiceUnavailable` (after stopping what it started) when a service can be neither.
    """
    local = LocalServices(state_dir / "services", detach=True)
    local.root.mkdir(parents=True, exist_ok=True)
    demo = DemoEnvironment()
    try:
        if not _reachable(settings.services.database_url, 5432):
            server = local.start_postgres()
            demo.env["VITRINE_DATABASE_URL"] = (
                make_url(server).set(database="vitrine").render_as_string(False)
            )
            demo.notes.append(f"Postgres: none at {settings.services.database_url}; started a private one")
        if not _reachable(settings.services.broker_url, 6379):
            demo.env["VITRINE_BROKER_URL"] = local.start_redis()
            demo.notes.append(f"Redis: none at {settings.services.broker_url}; started a private one")
        if not _reachable(settings.store.s3_endpoint, 9000):
            if s3_configured:
                raise ServiceUnavailable(
                    f"no S3 endpoint answers at VITRINE_S3_ENDPOINT={settings.store.s3_endpoint}"
                )
            demo.env.update(
                VITRINE_S3_ENDPOINT=local.start_s3(),
                VITRINE_S3_ACCESS_KEY="demo",
                VITRINE_S3_SECRET_KEY="demo-secret",
            )
            demo.notes.append(
                f"S3: no MinIO at {settings.store.s3_endpoint}; using the embedded S3 endpoint "
                f"(moto server) at {demo.env['VITRINE_S3_ENDPOINT']}"
            )
    except ServiceUnavailable:
        local.stop()
        raise
    demo.pids = [p.pid for p in local.processes]
    server = demo.env.get("VITRINE_DATABASE_URL", settings.services.database_url)
    demo.env["VITRINE_DATABASE_URL"] = make_url(server).set(database=DEMO_DATABASE).render_as_string(False)
    return demo


def configure_processes(demo: DemoEnvironment) -> None:
    """Flower credentials made for this run, free ports, quick batches, the model choice."""
    demo.flower_password = secrets.token_urlsafe(12)
    demo.moderator_password = secrets.token_urlsafe(12)
    demo.review_port = 8000 if not port_open("127.0.0.1", 8000) else free_port()
    demo.env.update(
        VITRINE_FLOWER_USER="demo",
        VITRINE_FLOWER_PASSWORD=demo.flower_password,
        VITRINE_FLOWER_PORT=str(5555 if not port_open("127.0.0.1", 5555) else free_port()),
        VITRINE_METRICS_PORT=str(9108 if not port_open("127.0.0.1", 9108) else free_port()),
        # Quick batches for a demo: each flush waits at most half a second.
        VITRINE_FLUSH_INTERVAL=os.environ.get("VITRINE_FLUSH_INTERVAL", "0.5"),
        VITRINE_SESSION_SECRET=secrets.token_urlsafe(32),
    )
    # The model choice travels with the demo's environment, so `vitrine status` sees the same backbone.
    demo.env.update({k: os.environ[k] for k in ("VITRINE_MODEL", "VITRINE_WEIGHTS") if k in os.environ})


def write_environment(demo: DemoEnvironment, state_dir: Path) -> None:
    """The demo's variables for a shell (`source .vitrine/demo.env`); it holds passwords: owner only."""
    path = state_dir / "demo.env"
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text("".join(f"export {k}='{v}'\n" for k, v in sorted(demo.env.items())))
    state_file(state_dir).write_text(json.dumps({"pids": demo.pids}))


def background_commands(state_dir: Path, review_port: int) -> dict[str, list[str]]:
    vitrine = [sys.executable, "-m", "vitrine.cli"]
    celery = [sys.executable, "-m", "celery", "-A", "workers.app"]
    return {
        "worker-embed": [*vitrine, "worker", "embed"],
        "worker-explain": [*vitrine, "worker", "explain"],
        "worker-refit": [*vitrine, "worker", "refit"],
        "worker-webhooks": [*vitrine, "worker", "webhooks"],
        "beat": [*celery, "beat", "--schedule", str(state_dir / "celerybeat-schedule"), "--loglevel", "INFO"],
        "flower": [*vitrine, "flower", "--address", "127.0.0.1"],
        "metrics": [*vitrine, "metrics", "--address", "127.0.0.1"],
        "review": [*vitrine, "serve", "--host", "127.0.0.1", "--port", str(review_port)],
    }


def prepare_database(demo: DemoEnvironment, keep: bool) -> None:
    """The demo's database, new unless `keep`; migrated; with a moderator account made for this run."""
    settings = demo.settings
    if not keep:
        drop_database(settings.services.database_url)
    ensure_database(settings.services.database_url)
    migrate(settings.services.database_url)
    database = Database(settings.services.database_url)
    try:
        with database.transaction() as session:
            session.execute(delete(Account).where(Account.name == DEMO_MODERATOR))
            add_user(session, DEMO_MODERATOR, demo.moderator_password)
    finally:
        database.dispose()


def start_processes(demo: DemoEnvironment, state_dir: Path, log_dir: Path) -> list[str]:
    """Start workers, beat, Flower, metrics and the review app in the background."""
    commands = background_commands(state_dir, demo.review_port)
    for name, argv in commands.items():
        with open(log_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **demo.env},
            )
        demo.pids.append(process.pid)
    state_file(state_dir).write_text(json.dumps({"pids": demo.pids}))
    return list(commands)


def stop(state_dir: Path) -> int | None:
    """Stop the processes a demo recorded; None when none is recorded."""
    state = state_file(state_dir)
    if not state.exists():
        return None
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
    return len(pids)


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


def counts_by_status(runtime: Runtime, external_ids: list[str]) -> Counter[str]:
    with runtime.db.transaction() as session:
        rows = session.execute(
            select(Listing.status, func.count())
            .where(Listing.external_id.in_(external_ids))
            .group_by(Listing.status)
        ).all()
    return Counter({status: n for status, n in rows})


def wait_for_statuses(
    runtime: Runtime,
    external_ids: list[str],
    done: set[str],
    timeout: float,
    progress: Callable[[int], None] | None = None,
) -> Counter[str]:
    """Poll until every listing has one of the `done` statuses, or the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        counts = counts_by_status(runtime, external_ids)
        finished = sum(n for status, n in counts.items() if status in done)
        if progress is not None:
            progress(finished)
        if finished >= len(external_ids) or time.monotonic() > deadline:
            return counts
        time.sleep(1)


def explanations_pending(runtime: Runtime, external_ids: list[str]) -> int:
    with runtime.db.transaction() as session:
        return session.execute(
            select(func.count())
            .select_from(Suggestion)
            .join(Listing, Listing.id == Suggestion.listing_id)
            .where(
                Listing.external_id.in_(external_ids),
                Suggestion.needs_review,
                Suggestion.overlay_key.is_(None),
                Suggestion.explain_error.is_(None),
            )
        ).scalar_one()


def summarise(runtime: Runtime, published: list[PublishedPhoto], result: RefitResult) -> dict[str, object]:
    """Statuses, failures, review backlog, overlays, and accuracy on the held-back categories."""
    ids = [p.external_id for p in published]
    held_back = {p.external_id: p.category for p in published if p.category and not p.given_to_seller}
    with runtime.db.transaction() as session:
        rows = session.execute(
            select(
                Listing.external_id,
                Listing.status,
                Listing.failure_reason,
                Suggestion.category,
                Suggestion.needs_review,
                Suggestion.overlay_key,
            )
            .outerjoin(Suggestion, Suggestion.listing_id == Listing.id)
            .where(Listing.external_id.in_(ids))
        ).all()
    judged = [(row[3], held_back[row[0]]) for row in rows if row[0] in held_back and row[3] is not None]
    # Auto-accepted (no review needed) among the held-back listings, and how often they are right.
    accepted = [(row[3], held_back[row[0]]) for row in rows if row[0] in held_back and row[4] is False]
    return {
        "listings": len(rows),
        "by_status": dict(Counter(row[1] for row in rows)),
        "failures": dict(Counter(row[2] for row in rows if row[2])),
        "needs_review": sum(1 for row in rows if row[4]),
        "overlays": sum(1 for row in rows if row[5]),
        "held_back": len(held_back),
        "accuracy_held_back": sum(s == t for s, t in judged) / len(judged) if judged else None,
        "coverage_held_back": len(accepted) / len(held_back) if held_back else None,
        "realised_precision_held_back": sum(s == t for s, t in accepted) / len(accepted)
        if accepted
        else None,
        "ari": result.ari,
        "nmi": result.nmi,
        "clustering_version": result.version_id,
    }
