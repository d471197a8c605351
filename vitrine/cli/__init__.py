"""The `vitrine` command line: one module per command group, registered on `vitrine.cli.root.app`."""

from __future__ import annotations

import sys

from common.ops import logs
from common.settings import ConfigError
from vitrine.cli.root import CommandState, app, console

__all__ = ["CommandState", "app", "main", "register"]


def register() -> None:
    # Imported when a command runs, not at import: each module's own imports stay off `--help`.
    from vitrine.cli import accounts, bench, core, demo, evaluate, explain, ops, serve, webhooks  # noqa: F401


def main() -> None:
    # Vitrine's own progress messages at INFO; libraries speak only when something is wrong.
    logs.configure("text")
    register()
    try:
        app()
    except ConfigError as error:
        console.print(f"[red]configuration error:[/red] {error}")
        sys.exit(2)
