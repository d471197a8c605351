"""The command line's root: the Typer app every command module registers on, and the invocation's state.

Settings are read once per invocation, when a command first needs them, and handed on from
`state(ctx)`; `--help` and argument errors never need a valid configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import cached_property
from typing import TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from common.ops import logs
from common.runtime import Runtime
from common.settings import Settings, load_settings

app = typer.Typer(help="Vitrine: categorise marketplace listings from their photos.", no_args_is_help=True)
console = Console(stderr=True)
T = TypeVar("T")


class CommandState:
    """The invocation's settings and runtime, made on first use."""

    def __init__(self, settings: Settings | None = None) -> None:
        if settings is not None:
            self.__dict__["settings"] = settings

    @cached_property
    def settings(self) -> Settings:
        settings = load_settings()
        # The process's log lines in the configured format from here on (text until then).
        logs.configure(settings.ops.log_format)
        return settings

    @cached_property
    def runtime(self) -> Runtime:
        return Runtime(self.settings)

    def close(self) -> None:
        if "runtime" in self.__dict__:
            self.runtime.close()


@app.callback()
def _root(ctx: typer.Context) -> None:
    if not isinstance(ctx.obj, CommandState):
        ctx.obj = CommandState()
    ctx.call_on_close(ctx.obj.close)


def state(ctx: typer.Context) -> CommandState:
    root = ctx.find_root()
    assert isinstance(root.obj, CommandState)
    return root.obj


def render(table: Table, width: int = 160) -> str:
    """A table as plain text for stdout (rich's own console writes to stderr)."""
    out = Console(width=width, record=True)
    with out.capture() as captured:
        out.print(table)
    return captured.get()


def when(at: datetime | None, seconds: bool = False) -> str:
    """A time in UTC for a table cell; "-" for none."""
    if at is None:
        return "-"
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def refusing(ctx: typer.Context, work: Callable[[Session], T], *refused: type[Exception]) -> T:
    """`work` in one transaction; a `refused` error rolls it back and ends the command (exit 2)
    with its message, which says why."""
    try:
        with state(ctx).runtime.db.transaction() as session:
            return work(session)
    except refused as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
