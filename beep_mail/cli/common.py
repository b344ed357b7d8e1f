"""What every command shares: settings, the database, output, the audit actor.

Commands stay thin: they parse arguments, call the store, and print. Errors of
the layers below are not caught here; `main` turns them into one `Error:` line.
"""

from __future__ import annotations

import datetime
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from beep_mail import config
from beep_mail.config import Settings
from beep_mail.store.engine import Database, translated

T = TypeVar("T")


class CLIError(Exception):
    """A request the CLI itself refuses; the message is shown as it is."""


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        dir_okay=False,
        help="Settings file; by default $BEEPMAIL_CONFIG, else conf/beepmail.toml.",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")
]
YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")
]


# -- settings and database --------------------------------------------------


def load_settings(explicit: Path | None) -> Settings:
    """The settings named by --config, else $BEEPMAIL_CONFIG, else the default."""
    return config.load(config.config_path(explicit))


def open_database(settings: Settings) -> Database:
    """An open, migrated database; the caller closes it."""
    with translated():
        db = Database(settings.database_url)
    try:
        db.migrate()
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def database(settings: Settings) -> Iterator[Database]:
    db = open_database(settings)
    try:
        yield db
    finally:
        db.close()


@contextmanager
def transaction(db: Database) -> Iterator[Connection]:
    """One write transaction: the change and its audit event commit together."""
    with translated(), db.engine.begin() as connection:
        yield connection


def safe_url(url: str) -> str:
    """The database URL without its password, fit for output."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # unparsable: it has no password to hide
        return url


def actor() -> str:
    """Who audit events name: the operating-system user running the CLI."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        name = f"uid{os.getuid()}"
    return f"cli:{name}"


# -- input ------------------------------------------------------------------


def interactive() -> bool:
    """Whether a person can answer questions on this terminal."""
    return sys.stdin.isatty()


def confirm(question: str, yes: bool) -> None:
    """Go on only with --yes or a "y" typed at a terminal."""
    if yes:
        return
    if not interactive():
        raise CLIError("this needs confirmation: run it again with --yes")
    if not _ask(lambda: typer.confirm(question, default=False)):
        typer.echo("Nothing changed.", err=True)
        raise typer.Exit(1)


def read_password(from_stdin: bool) -> str:
    """A new password from one line of standard input, or typed twice, hidden."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise CLIError("no password on standard input")
        return line.removesuffix("\n").removesuffix("\r")
    if not interactive():
        raise CLIError("no terminal to type a password on: use --password-stdin")

    value: object = _ask(
        lambda: typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    )
    return str(value)


def _ask(question: Callable[[], T]) -> T:
    """Run a prompt; Ctrl-C stays an interrupt, a closed input becomes an error."""
    try:
        return question()
    except typer.Abort as error:
        # The prompt turns both into Abort; its context says which it was.
        if isinstance(error.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise CLIError("no answer: standard input is closed") from None


# -- output -----------------------------------------------------------------


def print_json(value: Any) -> None:
    """JSON for scripts: the only thing written to stdout."""
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def say(message: str) -> None:
    typer.echo(message)


def iso(epoch: float | None) -> str | None:
    """ISO 8601 in UTC, to the second."""
    if epoch is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def timestamps(name: str, epoch: float | None) -> dict[str, Any]:
    """`name` as ISO 8601 and `name_epoch` as seconds, for JSON output."""
    return {name: iso(epoch), f"{name}_epoch": epoch}


def span(seconds: float) -> str:
    """A duration as a person reads it: 45s, 12m, 3h 5m, 2d 4h."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def table(
    columns: Sequence[str], rows: Sequence[Sequence[object]], empty: str = ""
) -> None:
    """A table for people. Cells are plain text: no markup is interpreted."""
    if not rows and empty:
        say(empty)
        return
    grid = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*(Text(cell_text(cell)) for cell in row))
    _print(grid)


def fields(pairs: Sequence[tuple[str, object]]) -> None:
    """Name and value, one per line, for `show` commands."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for name, value in pairs:
        grid.add_row(Text(name), Text(cell_text(value)))
    _print(grid)


def _print(grid: Table) -> None:
    # A console per call writes to the sys.stdout of the moment. Into a pipe or
    # a file, a row stays on one line however long it is.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 10_000)
    with console.capture() as captured:
        console.print(grid)
    lines = captured.get().splitlines()
    typer.echo("\n".join(line.rstrip() for line in lines), color=console.is_terminal)


def cell_text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
