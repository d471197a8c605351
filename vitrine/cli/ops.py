"""Operations commands: Flower with authentication, the Prometheus exporter, and a status report."""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Annotated

import typer
from rich.table import Table

from common.settings import ENV_PREFIX
from vitrine.cli.root import app, console, state

FLOWER_OVERRIDDEN = frozenset(
    {
        "FLOWER_BASIC_AUTH",
        "FLOWER_AUTH",
        "FLOWER_AUTH_PROVIDER",
        "FLOWER_UNAUTHENTICATED_API",
        "FLOWER_ADDRESS",
        "FLOWER_PORT",
    }
)

Port = Annotated[int | None, typer.Option(min=1, max=65535, help="Default: from the settings.")]


@app.command()
def flower(
    ctx: typer.Context,
    port: Port = None,
    address: Annotated[
        str, typer.Option(help="Interface to listen on (compose listens on 0.0.0.0 inside its network).")
    ] = "127.0.0.1",
    insecure_local: Annotated[
        bool,
        typer.Option(
            "--insecure-local",
            help="Run without credentials, listening on 127.0.0.1 only (a developer's machine).",
        ),
    ] = False,
) -> None:
    """Start Flower for the Celery app, behind HTTP basic authentication from the settings."""
    settings = state(ctx).settings
    user = settings.ops.flower_user
    password = settings.ops.flower_password.get_secret_value() if settings.ops.flower_password else ""
    # Authentication and the listening address come from Vitrine's settings only; other FLOWER_*
    # options (url_prefix, persistent, ...) pass through.
    env = {key: value for key, value in os.environ.items() if key not in FLOWER_OVERRIDDEN}
    if user and password:
        # Flower splits its basic-auth list on commas and each entry on the first colon.
        if "," in user or ":" in user or "," in password:
            console.print(
                f"[red]{ENV_PREFIX}FLOWER_USER may not contain ',' or ':', "
                f"{ENV_PREFIX}FLOWER_PASSWORD may not contain ','[/red]"
            )
            raise typer.Exit(2)
        # Through the environment, not argv: a password in argv is visible in `ps`.
        env["FLOWER_BASIC_AUTH"] = f"{user}:{password}"
    elif insecure_local:
        address = "127.0.0.1"
        console.print("[yellow]Flower without authentication, on 127.0.0.1 only[/yellow]")
    else:
        console.print(
            f"[red]refusing to start Flower without credentials:[/red] set {ENV_PREFIX}FLOWER_USER and "
            f"{ENV_PREFIX}FLOWER_PASSWORD, or pass --insecure-local to listen on 127.0.0.1 only"
        )
        raise typer.Exit(2)
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "flower",
        f"--port={port or settings.ops.flower_port}",
        f"--address={address}",
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


@app.command()
def metrics(
    ctx: typer.Context,
    port: Port = None,
    address: Annotated[
        str, typer.Option(help="Interface to listen on (compose listens on 0.0.0.0 inside its network).")
    ] = "127.0.0.1",
) -> None:
    """Serve Prometheus metrics (queues, listings, failures, review backlog, clustering) on /metrics."""
    from prometheus_client import start_http_server

    from common.ops.metrics import registry
    from common.ops.status import status_database

    settings = state(ctx).settings
    listen = port or settings.ops.metrics_port
    server, thread = start_http_server(
        listen, addr=address, registry=registry(settings, status_database(settings))
    )
    console.print(f"metrics on http://{address}:{listen}/metrics")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        thread.join(timeout=5)


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ping_timeout: Annotated[
        float, typer.Option(min=0.1, max=30, help="Seconds to wait for workers to answer a ping.")
    ] = 1.0,
) -> None:
    """Listings, review backlog, clustering, queues and workers; non-zero exit when a service is down."""
    from common.ops.status import collect, status_database

    settings = state(ctx).settings
    db = status_database(settings)
    try:
        snapshot = collect(settings, db, ping_timeout=ping_timeout)
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps(snapshot.as_json(), indent=2, default=str))
    else:
        _print_status(snapshot.as_json())
    down = snapshot.unreachable
    if down:
        for name in down:
            console.print(f"[red]{name} unavailable:[/red] {snapshot.services[name]}")
        raise typer.Exit(1)


def _print_status(report: dict[str, object]) -> None:
    from rich.console import Console

    out = Console()
    table = Table(title="Vitrine", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    services = report["services"]
    assert isinstance(services, dict)
    for name, health in services.items():
        table.add_row(name, "[green]ok[/green]" if health["ok"] else f"[red]{health['error']}[/red]")
    for key in (
        "listings_by_status",
        "failures_by_reason",
        "needs_review",
        "explanations",
        "explain_errors",
        "reconciled_total",
        "embeddings",
        "clustering",
        "last_refit",
        "queues",
        "unacked",
        "workers",
    ):
        value = report[key]
        if isinstance(value, dict):
            shown = ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
        elif isinstance(value, list):
            shown = ", ".join(value) or "none answered"
        else:
            shown = "unknown" if value is None else str(value)
        table.add_row(key.replace("_", " "), shown)
    out.print(table)
