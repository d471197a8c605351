"""The `vitrine` command line: one module per command group, registered here."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

from common.config import ConfigError

app = typer.Typer(help="Vitrine: categorise marketplace listings from their photos.", no_args_is_help=True)
console = Console(stderr=True)


def _register() -> None:
    # Imported here so that each module can `from common.cli import app`.
    from common.cli import bench, core, demo, evaluate, explain, ops  # noqa: F401


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Vitrine's own progress messages; libraries speak only when something is wrong.
    logging.getLogger("common").setLevel(logging.INFO)
    _register()
    try:
        app()
    except ConfigError as error:
        console.print(f"[red]configuration error:[/red] {error}")
        sys.exit(2)
