"""`beepmail archive ...`: the records clerk's commands.

Search shows metadata only. Export decrypts with the records secret key, on
the clerk's machine; the gateway never holds that key. Verify recomputes the
hash chain, checks the signed checkpoints (and one kept off the gateway,
given as a file) or checks an export against its manifest. Checkpoint prints
the latest signed checkpoint for the records office to keep. Hold, release
and purge change the archive, each with an audit event in its transaction.

Entries are named by sequence number (17, or a run: 17-25) and by filters;
every filter given must match.
"""

from __future__ import annotations

import datetime
import enum
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from beep_mail import keyring
from beep_mail.archive import checkpoint as checkpoints
from beep_mail.archive import export as exporter
from beep_mail.archive import retention
from beep_mail.archive.checkpoint import CheckpointRecord
from beep_mail.archive.journal import ArchiveError
from beep_mail.archive.search import EntryInfo, Selection
from beep_mail.archive.search import search as find
from beep_mail.archive.verify import (
    ArchiveReport,
    ExportReport,
    Problem,
    verify_archive,
    verify_export,
)
from beep_mail.cli.common import (
    CLIError,
    ConfigOption,
    JsonOption,
    actor,
    database,
    interactive,
    iso,
    load_settings,
    print_json,
    say,
    table,
    timestamps,
    transaction,
)
from beep_mail.config import Settings
from beep_mail.crypto import openpgp
from beep_mail.crypto.openpgp import UnlockedKey
from beep_mail.store import audit
from beep_mail.store import keys as key_store
from beep_mail.store.engine import Database, translated

app = typer.Typer(
    help="The records archive: search, export, verify, checkpoint, hold, release, "
    "purge.",
    no_args_is_help=True,
)


class Direction(str, enum.Enum):
    inbound = "inbound"
    outbound = "outbound"
    local = "local"


class ExportFormat(str, enum.Enum):
    mbox = "mbox"
    eml = "eml"


@contextmanager
def _archive_errors() -> Iterator[None]:
    """Errors of the archive, keys and OpenPGP, as the one line main prints."""
    try:
        yield
    except (
        ArchiveError,
        keyring.KeyringError,
        key_store.KeyStoreError,
        openpgp.OpenPGPError,
    ) as error:
        raise CLIError(str(error)) from None


# -- selections -----------------------------------------------------------------------


def moment(text: str, *, end: bool = False) -> float:
    """A date (YYYY-MM-DD) or date and time (ISO 8601, UTC unless it says) as epoch.

    A bare date given as an end means the end of that day.
    """
    value = text.strip()
    try:
        if len(value) == 10:
            day = datetime.date.fromisoformat(value)
            start = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
            return (start + datetime.timedelta(days=1 if end else 0)).timestamp()
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise CLIError(
            f"{text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


SeqArguments = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[SEQ]...",
        help="Entry numbers: 17, or a run: 17-25.",
        show_default=False,
    ),
]
SinceOption = Annotated[
    str | None,
    typer.Option("--since", metavar="DATE", help="From this day or time (UTC)."),
]
UntilOption = Annotated[
    str | None,
    typer.Option("--until", metavar="DATE", help="Up to this day (included) or time."),
]
SenderOption = Annotated[
    str | None, typer.Option("--sender", metavar="ADDRESS", help="Envelope sender.")
]
RecipientOption = Annotated[
    str | None,
    typer.Option(
        "--recipient", metavar="ADDRESS", help="One of the envelope recipients."
    ),
]
MessageIdOption = Annotated[
    str | None,
    typer.Option(
        "--message-id", metavar="ID", help="The Message-ID header, <> optional."
    ),
]
DirectionOption = Annotated[
    Direction | None, typer.Option("--direction", help="Which way the message went.")
]


def _seq_runs(
    values: list[str] | None,
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    seqs: list[int] = []
    runs: list[tuple[int, int]] = []
    for value in values or []:
        first, sep, last = value.strip().partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise CLIError(f"{value!r} is not an entry number (17) or a run (17-25)")
        if sep:
            runs.append((int(first), int(last)))
        else:
            seqs.append(int(first))
    return tuple(seqs), tuple(runs)


def selection(
    seqs: list[str] | None,
    since: str | None,
    until: str | None,
    sender: str | None,
    recipient: str | None,
    message_id: str | None,
    direction: Direction | None,
) -> Selection:
    numbers, runs = _seq_runs(seqs)
    return Selection(
        seqs=numbers,
        ranges=runs,
        since=moment(since) if since else None,
        until=moment(until, end=True) if until else None,
        sender=sender,
        recipient=recipient,
        message_id=message_id,
        direction=direction.value if direction else None,
    )


# -- output ---------------------------------------------------------------------------


def entry_json(entry: EntryInfo) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        **timestamps("at", entry.at),
        "direction": entry.direction,
        "queue_id": entry.queue_id,
        "mail_from": entry.mail_from,
        "recipients": entry.recipients,
        "message_id": entry.message_id_header,
        "size": entry.size,
        "sha256": entry.sha256,
        "decision": entry.decision,
        "state": entry.state,
        **timestamps("retain_until", entry.retain_until),
        "hold_reason": entry.hold_reason,
        **timestamps("held_at", entry.held_at),
        **timestamps("purged_at", entry.purged_at),
        "hash": entry.hash,
    }


def checkpoint_json(cp: CheckpointRecord) -> dict[str, Any]:
    return {
        "entries": cp.entries,
        "head_hash": cp.head_hash,
        **timestamps("at", cp.at),
        "signer": cp.signer,
        "signature": cp.signature,
        "text": checkpoints.render(cp),
    }


def _problem_json(problem: Problem | None) -> dict[str, Any] | None:
    if problem is None:
        return None
    return {"kind": problem.kind, "seq": problem.seq, "message": problem.message}


def _entries(count: int) -> str:
    return "1 entry" if count == 1 else f"{count} entries"


def _runs_text(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


# -- search ---------------------------------------------------------------------------


@app.command()
def search(
    seqs: SeqArguments = None,
    since: SinceOption = None,
    until: UntilOption = None,
    sender: SenderOption = None,
    recipient: RecipientOption = None,
    message_id: MessageIdOption = None,
    direction: DirectionOption = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="At most this many entries.")
    ] = None,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Find archive entries; shows their metadata, never their content."""
    chosen = selection(seqs, since, until, sender, recipient, message_id, direction)
    settings = load_settings(config_file)
    with database(settings) as db, translated(), _archive_errors():
        entries = find(db.engine, chosen, limit=limit)

    if as_json:
        print_json([entry_json(entry) for entry in entries])
        return
    table(
        ["Seq", "Time", "Direction", "From", "To", "Message-ID", "Size", "State"],
        [
            (
                e.seq,
                iso(e.at),
                e.direction,
                e.mail_from or "<>",
                ", ".join(e.recipients),
                e.message_id_header,
                e.size,
                e.state,
            )
            for e in entries
        ],
        empty="No archive entries match.",
    )


# -- export ---------------------------------------------------------------------------


def _passphrase(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise CLIError("no passphrase on standard input")
        return line.removesuffix("\n").removesuffix("\r")
    if not interactive():
        raise CLIError("no terminal to type the passphrase on: use --passphrase-stdin")
    try:
        value: object = typer.prompt("Passphrase of the records key", hide_input=True)
    except typer.Abort as error:
        if isinstance(error.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise CLIError("no answer: standard input is closed") from None
    return str(value)


def _records_secret(path: Path, from_stdin: bool) -> UnlockedKey:
    text = path.read_text(encoding="utf-8", errors="replace")
    with _archive_errors():
        secret = openpgp.load_secret(text)
        return secret.unlock(_passphrase(from_stdin))


@contextmanager
def _progress_bar() -> Iterator[exporter.Progress]:
    """A progress bar on a terminal's standard error; nothing in a script."""
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("Exporting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task = bar.add_task("export", total=None)

    def advance(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield advance


@app.command()
def export(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            file_okay=False,
            help="A new or empty folder for the export.",
        ),
    ],
    key_file: Annotated[
        Path,
        typer.Option(
            "--key",
            metavar="RECORDS-SECRET.asc",
            dir_okay=False,
            help="The records office's secret key (kept off the gateway).",
        ),
    ],
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="mbox: one file for a mail program; eml: one file per message.",
        ),
    ] = ExportFormat.mbox,
    passphrase_stdin: Annotated[
        bool,
        typer.Option(
            "--passphrase-stdin",
            help="Read the key's passphrase from one line of input.",
        ),
    ] = False,
    seqs: SeqArguments = None,
    since: SinceOption = None,
    until: UntilOption = None,
    sender: SenderOption = None,
    recipient: RecipientOption = None,
    message_id: MessageIdOption = None,
    direction: DirectionOption = None,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Decrypt entries into mbox or .eml files, with a SHA-256 manifest."""
    chosen = selection(seqs, since, until, sender, recipient, message_id, direction)
    settings = load_settings(config_file)
    secret = _records_secret(key_file, passphrase_stdin)
    with database(settings) as db:
        with translated(), _archive_errors(), _progress_bar() as progress:
            result = exporter.export(
                db.engine,
                secret,
                out,
                fmt=fmt.value,
                selection=chosen,
                progress=progress,
            )
        with transaction(db) as connection:
            audit.record(
                connection,
                actor(),
                "archive.export",
                str(out),
                {
                    "format": fmt.value,
                    "messages": result.messages,
                    "tombstones": result.tombstones,
                    "selection": chosen.describe(),
                    "records_key": secret.public.fingerprint,
                },
            )

    if as_json:
        print_json(
            {
                "folder": str(out),
                "format": fmt.value,
                "messages": result.messages,
                "tombstones": result.tombstones,
                "files": list(result.files),
            }
        )
        return
    say(
        f"Exported {result.messages} message(s) to {out} ({fmt.value}); "
        f"{_entries(result.tombstones)} purged, listed in {exporter.TOMBSTONES}. "
        f"Check it with: beepmail archive verify --export {out}"
    )


# -- verify ---------------------------------------------------------------------------


def _archive_json(report: ArchiveReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "entries": report.entries,
        "head_hash": report.head_hash,
        "purged": report.purged,
        "held": report.held,
        "checkpoints": report.checkpoints,
        "kept_checkpoint": checkpoint_json(report.against) if report.against else None,
        "problem": _problem_json(report.problem),
    }


def _export_json(report: ExportReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "folder": str(report.folder),
        "files": report.files,
        "entries": report.entries,
        "problem": _problem_json(report.problem),
    }


@app.command()
def verify(
    checkpoint_file: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            metavar="FILE",
            dir_okay=False,
            help="A checkpoint kept off the gateway.",
        ),
    ] = None,
    export_dir: Annotated[
        Path | None,
        typer.Option(
            "--export",
            metavar="DIR",
            file_okay=False,
            help="Check this export against its manifest "
            "(alone, without the database).",
        ),
    ] = None,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recompute the archive's hash chain and check its signed checkpoints."""
    found: dict[str, Any] = {}
    problems: list[Problem] = []
    if export_dir is not None:
        exported = verify_export(export_dir)
        found["export"] = _export_json(exported)
        problems += [exported.problem] if exported.problem else []
    if export_dir is None or checkpoint_file is not None:
        kept = None
        if checkpoint_file is not None:
            with _archive_errors():
                kept = checkpoints.parse(
                    checkpoint_file.read_text(encoding="utf-8", errors="replace")
                )
        settings = load_settings(config_file)
        with database(settings) as db, translated():
            report = verify_archive(db.engine, kept)
        found["archive"] = _archive_json(report)
        problems += [report.problem] if report.problem else []

    if as_json:
        print_json({"ok": not problems, **found})
    if problems:
        raise CLIError(problems[0].message)
    if not as_json:
        _say_verified(found)


def _say_verified(found: dict[str, Any]) -> None:
    if "archive" in found:
        report = found["archive"]
        say(
            f"Archive intact: {report['entries']} entries ({report['purged']} purged, "
            f"{report['held']} held), head {report['head_hash']}; "
            f"{report['checkpoints']} stored checkpoint(s) verified."
        )
        kept = report["kept_checkpoint"]
        if kept is not None:
            say(
                f"It matches the kept checkpoint of {kept['at']} "
                f"({kept['entries']} entries)."
            )
    if "export" in found:
        report = found["export"]
        say(
            f"Export {report['folder']} intact: {report['files']} files, "
            f"{report['entries']} message(s), as its manifest lists them."
        )


# -- checkpoint -----------------------------------------------------------------------


def _domain_signer(db: Database, settings: Settings) -> UnlockedKey:
    with translated(), db.engine.connect() as connection:
        record = key_store.active_key(connection, "domain", settings.site.domain)
    if record is None or record.secret_key is None:
        raise CLIError(f"{settings.site.domain} has no domain key to sign with")
    with _archive_errors():
        return openpgp.load_secret(record.secret_key).unlock(
            keyring.site_secret(settings)
        )


@app.command()
def checkpoint(
    new: Annotated[
        bool,
        typer.Option("--new", help="Sign a checkpoint of the archive as it is now."),
    ] = False,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print the latest signed checkpoint, for the records office to keep."""
    settings = load_settings(config_file)
    with database(settings) as db:
        with translated():
            found = None if new else checkpoints.latest(db.engine)
        if found is None:
            signer = _domain_signer(db, settings)
            with translated(), _archive_errors():
                found = checkpoints.make_checkpoint(db.engine, signer, actor=actor())

    if as_json:
        print_json(checkpoint_json(found))
    else:
        typer.echo(checkpoints.render(found), nl=False)


# -- retention ------------------------------------------------------------------------


@app.command()
def purge(
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Say what would be purged; change nothing."),
    ] = False,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove the content of entries past retention, except those on hold."""
    settings = load_settings(config_file)
    with database(settings) as db, translated():
        change = retention.purge(db.engine, time.time(), actor(), dry_run=dry_run)

    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "purged": change.count,
                "ranges": [list(r) for r in change.ranges],
                "kept_by_hold": change.skipped,
            }
        )
        return
    verb = "Would purge" if dry_run else "Purged"
    runs = f" ({_runs_text(change.ranges)})" if change.seqs else ""
    say(
        f"{verb} the content of {_entries(change.count)}{runs}; "
        f"{_entries(change.skipped)} past retention kept by a hold."
    )


@app.command()
def hold(
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            metavar="TEXT",
            help="Why: the case, request or order (required).",
        ),
    ],
    seqs: SeqArguments = None,
    since: SinceOption = None,
    until: UntilOption = None,
    sender: SenderOption = None,
    recipient: RecipientOption = None,
    message_id: MessageIdOption = None,
    direction: DirectionOption = None,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Place a legal hold: purge keeps these entries until released."""
    chosen = selection(seqs, since, until, sender, recipient, message_id, direction)
    settings = load_settings(config_file)
    with database(settings) as db, translated(), _archive_errors():
        change = retention.hold(db.engine, chosen, reason, actor())

    if as_json:
        print_json(
            {
                "held": change.count,
                "ranges": [list(r) for r in change.ranges],
                "already_held": change.skipped,
                "reason": reason.strip(),
            }
        )
        return
    runs = f" ({_runs_text(change.ranges)})" if change.seqs else ""
    say(f"Held {_entries(change.count)}{runs}; {change.skipped} already held.")


@app.command()
def release(
    seqs: SeqArguments = None,
    since: SinceOption = None,
    until: UntilOption = None,
    sender: SenderOption = None,
    recipient: RecipientOption = None,
    message_id: MessageIdOption = None,
    direction: DirectionOption = None,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Lift the legal hold on entries; purge may then remove expired content."""
    chosen = selection(seqs, since, until, sender, recipient, message_id, direction)
    settings = load_settings(config_file)
    with database(settings) as db, translated(), _archive_errors():
        change = retention.release(db.engine, chosen, actor())

    if as_json:
        print_json(
            {"released": change.count, "ranges": [list(r) for r in change.ranges]}
        )
        return
    runs = f" ({_runs_text(change.ranges)})" if change.seqs else ""
    say(f"Released {_entries(change.count)}{runs}.")
