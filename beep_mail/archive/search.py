"""Finding archive entries by their clear metadata; content is never read here.

A `Selection` names entries by sequence number, time, envelope sender or
recipient, Message-ID and direction; searches, holds, releases and exports
all take one. Every criterion given must match.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Select, func, or_, select

from beep_mail.archive.journal import DIRECTIONS, ArchiveError
from beep_mail.store.tables import archive_entries

# Every column but the content.
METADATA = [c for c in archive_entries.c if c.name != "content"]


@dataclass(frozen=True)
class Selection:
    seqs: tuple[int, ...] = ()
    ranges: tuple[tuple[int, int], ...] = ()  # inclusive (first, last) pairs
    since: float | None = None  # at >= since
    until: float | None = None  # at < until
    sender: str | None = None
    recipient: str | None = None
    message_id: str | None = None
    direction: str | None = None

    def __post_init__(self) -> None:
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ArchiveError(f"unknown direction {self.direction!r}")

    @property
    def empty(self) -> bool:
        """True when nothing narrows it: it selects the whole archive."""
        return self == Selection()

    def describe(self) -> dict[str, Any]:
        """The criteria given, for audit details and output."""
        found: dict[str, Any] = {}
        for name in (
            "seqs",
            "ranges",
            "since",
            "until",
            "sender",
            "recipient",
            "message_id",
            "direction",
        ):
            value = getattr(self, name)
            if value not in (None, ()):
                found[name] = [list(r) for r in value] if name == "ranges" else value
        return found


@dataclass(frozen=True)
class EntryInfo:
    """What a clerk may see of an entry without the records key."""

    seq: int
    at: float
    direction: str
    queue_id: str
    mail_from: str
    recipients: list[str]
    message_id_header: str | None
    size: int
    sha256: str
    decision: str
    content_sha256: str
    retain_until: float
    hold_reason: str | None
    held_at: float | None
    purged_at: float | None
    hash: str

    @property
    def state(self) -> str:
        if self.purged_at is not None:
            return "purged"
        return "held" if self.held_at is not None else "kept"


def info(row: Any) -> EntryInfo:
    try:
        recipients = [str(r) for r in json.loads(row.recipients)]
    except (ValueError, TypeError):
        recipients = []  # a damaged row: `archive verify` names it
    return EntryInfo(
        row.seq,
        row.at,
        row.direction,
        row.queue_id,
        row.mail_from,
        recipients,
        row.message_id_header,
        row.size,
        row.sha256,
        row.decision,
        row.content_sha256,
        row.retain_until,
        row.hold_reason,
        row.held_at,
        row.purged_at,
        row.hash,
    )


def _message_ids(value: str) -> list[str]:
    """A Message-ID as typed, with and without its angle brackets."""
    bare = value.strip().strip("<>").strip()
    return [bare, f"<{bare}>"]


def where(query: Select[Any], selection: Selection) -> Select[Any]:
    """The query narrowed by the selection, recipient only roughly (see matches)."""
    c = archive_entries.c
    if selection.seqs or selection.ranges:
        parts = [c.seq.in_(selection.seqs)] if selection.seqs else []
        parts += [c.seq.between(first, last) for first, last in selection.ranges]
        query = query.where(or_(*parts))
    if selection.since is not None:
        query = query.where(c.at >= selection.since)
    if selection.until is not None:
        query = query.where(c.at < selection.until)
    if selection.sender is not None:
        query = query.where(func.lower(c.mail_from) == selection.sender.strip().lower())
    if selection.message_id is not None:
        query = query.where(c.message_id_header.in_(_message_ids(selection.message_id)))
    if selection.direction is not None:
        query = query.where(c.direction == selection.direction)
    if selection.recipient is not None:
        # The JSON text contains the quoted address; matches() then checks exactly.
        needle = json.dumps(selection.recipient.strip().lower(), ensure_ascii=False)
        query = query.where(func.lower(c.recipients).contains(needle, autoescape=True))
    return query


def matches(row: Any, selection: Selection) -> bool:
    """What SQL cannot say exactly: one of the recipients is the one asked for."""
    if selection.recipient is None:
        return True
    wanted = selection.recipient.strip().lower()
    try:
        return any(str(r).lower() == wanted for r in json.loads(row.recipients))
    except (ValueError, TypeError):
        return False


def selected_rows(
    connection: Connection,
    selection: Selection,
    columns: Sequence[Any] = METADATA,
    limit: int | None = None,
) -> Generator[Any, None, None]:
    """Rows in sequence order, streamed; close the iterator if you stop early."""
    query = where(select(*columns), selection).order_by(archive_entries.c.seq)
    if selection.recipient is not None and "recipients" not in [
        getattr(col, "name", None) for col in columns
    ]:
        query = query.add_columns(archive_entries.c.recipients)
    if limit is not None and selection.recipient is None:
        query = query.limit(limit)
    # Options on the statement: on the connection they would outlive this query.
    query = query.execution_options(stream_results=True, yield_per=200)
    with connection.execute(query) as result:
        for row in result:
            if matches(row, selection):
                yield row


def search(
    engine: Engine, selection: Selection, *, limit: int | None = None
) -> list[EntryInfo]:
    """Entries that match, oldest first; at most `limit` of them."""
    found: list[EntryInfo] = []
    with (
        engine.connect() as connection,
        closing(selected_rows(connection, selection, limit=limit)) as rows,
    ):
        for row in rows:
            found.append(info(row))
            if limit is not None and len(found) >= limit:
                break
    return found
