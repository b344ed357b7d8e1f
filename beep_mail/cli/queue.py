"""`beepmail queue ...`: messages waiting for delivery, one row per recipient.

Commands take a message id, the short id that every log line and SMTP reply
about the message carries. They act on all of its recipients at once.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import Connection

from beep_mail.cli.common import (
    ConfigOption,
    JsonOption,
    YesOption,
    actor,
    confirm,
    database,
    fields,
    load_settings,
    print_json,
    say,
    span,
    table,
    timestamps,
    transaction,
)
from beep_mail.store import audit
from beep_mail.store import queue as store
from beep_mail.store.engine import translated
from beep_mail.store.queue import QueueRow

app = typer.Typer(
    help="The delivery queue: list, show, retry, hold, release, delete.",
    no_args_is_help=True,
)


class State(str, enum.Enum):
    """The states of a queue row (beep_mail.store.queue.STATES)."""

    queued = "queued"
    deferred = "deferred"
    held = "held"
    delivered = "delivered"
    failed = "failed"


MessageArgument = Annotated[
    str, typer.Argument(metavar="ID", help="The message id, as in logs and replies.")
]


def row_json(row: QueueRow) -> dict[str, Any]:
    return {
        "row": row.id,
        "message_id": row.message_id,
        "recipient": row.recipient,
        "domain": row.domain,
        "route": row.route,
        "state": row.state,
        "attempts": row.attempts,
        **timestamps("created_at", row.created_at),
        **timestamps("next_attempt_at", row.next_attempt_at),
        **timestamps("expires_at", row.expires_at),
        "last_status": row.last_status,
        "last_reply": row.last_reply,
        "mail_from": row.mail_from,
        "size": row.size,
    }


def _next(row: QueueRow, now: float) -> str:
    if row.state not in store.ACTIVE:
        return "-"
    wait = row.next_attempt_at - now
    return "due" if wait <= 0 else f"in {span(wait)}"


@app.command("list")
def list_(
    state: Annotated[
        State | None, typer.Option(help="Only rows in this state.")
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Include delivered and failed rows.")
    ] = False,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List recipients waiting for delivery (or held)."""
    settings = load_settings(config_file)
    with database(settings) as db, translated():
        rows = store.list_rows(
            db.engine, state=state.value if state else None, include_final=show_all
        )

    if as_json:
        print_json([row_json(row) for row in rows])
        return
    now = time.time()
    table(
        ["ID", "Recipient", "State", "Tries", "Age", "Next", "Last reply"],
        [
            (
                r.message_id,
                r.recipient,
                r.state,
                r.attempts,
                span(now - r.created_at),
                _next(r, now),
                r.last_reply,
            )
            for r in rows
        ],
        empty="Nothing in the queue." if show_all else "Nothing waiting.",
    )


@app.command()
def show(
    message_id: MessageArgument,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a message in the queue and where each recipient stands."""
    settings = load_settings(config_file)
    with database(settings) as db, translated(), db.engine.connect() as connection:
        rows = store.require_rows(connection, message_id)

    first = rows[0]
    found: dict[str, Any] = {
        "message_id": first.message_id,
        "mail_from": first.mail_from,
        "size": first.size,
        "recipients": [row_json(row) for row in rows],
    }
    if as_json:
        print_json(found)
        return
    now = time.time()
    fields(
        [
            ("Message", first.message_id),
            ("From", first.mail_from or "<> (a bounce)"),
            ("Size", f"{first.size} bytes"),
            ("Queued", found["recipients"][0]["created_at"]),
        ]
    )
    say("")
    table(
        ["Recipient", "Route", "State", "Tries", "Next", "Expires", "Last reply"],
        [
            (
                r.recipient,
                r.route,
                r.state,
                r.attempts,
                _next(r, now),
                f"in {span(r.expires_at - now)}",
                r.last_reply,
            )
            for r in rows
        ],
    )


def _change(
    config_file: Path | None,
    message_id: str,
    action: str,
    change: Callable[[Connection, str], int],
) -> int:
    """Apply one change to a message's rows and audit it, in one transaction."""
    settings = load_settings(config_file)
    with database(settings) as db, transaction(db) as connection:
        count = change(connection, message_id)
        audit.record(
            connection, actor(), f"queue.{action}", message_id, {"rows": count}
        )
    return count


@app.command()
def retry(message_id: MessageArgument, config_file: ConfigOption = None) -> None:
    """Try queued and deferred recipients now."""
    count = _change(config_file, message_id, "retry", store.retry)
    say(f"{message_id}: {count} recipient(s) due now.")


@app.command()
def hold(message_id: MessageArgument, config_file: ConfigOption = None) -> None:
    """Keep a message's waiting recipients from delivery until released."""
    count = _change(config_file, message_id, "hold", store.hold)
    say(f"{message_id}: {count} recipient(s) held.")


@app.command()
def release(message_id: MessageArgument, config_file: ConfigOption = None) -> None:
    """Let held recipients be delivered, now."""
    count = _change(config_file, message_id, "release", store.release)
    say(f"{message_id}: {count} recipient(s) released.")


@app.command()
def delete(
    message_id: MessageArgument,
    yes: YesOption = False,
    config_file: ConfigOption = None,
) -> None:
    """Delete a message from the queue; it is not delivered and not bounced."""
    settings = load_settings(config_file)
    with database(settings) as db:
        with translated(), db.engine.connect() as connection:
            rows = store.require_rows(connection, message_id)
        confirm(
            f"Delete {message_id} from {rows[0].mail_from or '<>'} "
            f"to {len(rows)} recipient(s)?",
            yes,
        )

        with transaction(db) as connection:
            count = _delete(connection, message_id)
    say(f"{message_id}: deleted with its {count} recipient(s); nothing is delivered.")


def _delete(connection: Connection, message_id: str) -> int:
    rows = store.require_rows(connection, message_id)
    count = store.remove(connection, message_id)
    audit.record(
        connection,
        actor(),
        "queue.delete",
        message_id,
        {
            "rows": count,
            "mail_from": rows[0].mail_from,
            "recipients": [row.recipient for row in rows],
        },
    )
    return count
