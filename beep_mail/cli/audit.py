"""`beepmail audit ...`: who did what, when, from where; and proof of it.

The audit trail is a hash chain: `verify` recomputes it and names the first
event that was altered, removed or moved. Client addresses expire after
privacy.client_address_days; an expired one shows as "expired" and the chain
still verifies, since it covers a salted commitment to the address.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from beep_mail.cli.archive import moment
from beep_mail.cli.common import (
    CLIError,
    ConfigOption,
    JsonOption,
    database,
    iso,
    load_settings,
    print_json,
    say,
    table,
    timestamps,
)
from beep_mail.store import audit
from beep_mail.store.audit import AuditRecord
from beep_mail.store.engine import translated

app = typer.Typer(help="The audit trail: list, verify.", no_args_is_help=True)


def event_json(event: AuditRecord) -> dict[str, Any]:
    return {
        "id": event.id,
        **timestamps("at", event.at),
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "detail": event.detail,
        "client_addr": event.client_addr,
        "client_addr_expired": event.client_addr_expired,
        "hash": event.hash,
    }


def _client(event: AuditRecord) -> str | None:
    return "expired" if event.client_addr_expired else event.client_addr


@app.command("list")
def list_(
    since: Annotated[
        str | None, typer.Option(metavar="DATE", help="From this day or time (UTC).")
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(metavar="DATE", help="Up to this day (included) or time."),
    ] = None,
    actor: Annotated[
        str | None, typer.Option(metavar="WHO", help="Only events by this actor.")
    ] = None,
    action: Annotated[
        str | None, typer.Option(metavar="ACTION", help="Only this action.")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, help="The newest N events that match.")
    ] = 100,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List audit events, oldest first."""
    start = moment(since) if since else None
    end = moment(until, end=True) if until else None
    settings = load_settings(config_file)
    with database(settings) as db, translated():
        events = audit.list_events(
            db.engine, limit=limit, action=action, actor=actor, since=start, until=end
        )

    if as_json:
        print_json([event_json(event) for event in events])
        return
    table(
        ["ID", "Time", "Actor", "Action", "Target", "From", "Detail"],
        [
            (
                e.id,
                iso(e.at),
                e.actor,
                e.action,
                e.target,
                _client(e),
                json.dumps(e.detail, ensure_ascii=False, sort_keys=True)
                if e.detail
                else None,
            )
            for e in events
        ],
        empty="No audit events match.",
    )


@app.command()
def verify(config_file: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Recompute the audit trail's hash chain; name the first bad event."""
    settings = load_settings(config_file)
    with database(settings) as db, translated():
        intact, checked, bad = audit.verify(db.engine)

    if as_json:
        print_json({"ok": intact, "events": checked, "first_bad_event": bad})
    if not intact:
        raise CLIError(
            f"audit event {bad} was altered, removed or moved: "
            f"the {checked} events before it verify"
        )
    if not as_json:
        say(f"Audit trail intact: {checked} events.")
