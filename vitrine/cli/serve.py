"""`vitrine serve`: the review app and the HTTP API."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from vitrine.cli.root import app, state


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on (compose: 0.0.0.0).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    proxy_headers: Annotated[
        bool, typer.Option(help="Trust X-Forwarded-* from a TLS proxy (cookies become Secure behind https).")
    ] = False,
) -> None:
    """Serve the moderators' pages and the `/api/v1` API."""
    import uvicorn

    from review.app import create_app

    application = create_app(state(ctx).settings, state(ctx).runtime)
    # A log line, not console text: in the JSON format every line of the stream is an object.
    logging.getLogger("vitrine.serve").info("review app on http://%s:%d/ (API under /api/v1)", host, port)
    # uvicorn believes forwarded headers only from 127.0.0.1 by default; a proxy in another
    # container (or on another host) is trusted by its address in VITRINE_FORWARDED_ALLOW_IPS.
    uvicorn.run(
        application,
        host=host,
        port=port,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=state(ctx).settings.review.forwarded_allow_ips,
        # uvicorn's loggers go to the process's one format (`common.ops.logs`); the app writes
        # its own access line, with the duration and the request id.
        log_config=None,
        access_log=False,
    )
