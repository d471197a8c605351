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
    from common.cli import core  # noqa: F401


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _register()
    try:
        app()
    except ConfigError as error:
        console.print(f"[red]configuration error:[/red] {error}")
        sys.exit(2)
